//! A tiny second module for tests: it registers one write and one read command, so a test
//! can check that redisraft classifies commands of modules loaded (and unloaded) after it.
//! `cargo test --release` builds it (`target/release/examples/libprobe_module.so`).
//!
//! Written against the raw API because `redis_module!` registers ACL categories, which
//! Redis 7.0 lacks. `probe.set key value` answers `OK` and `probe.get key` answers nil:
//! what they do to data does not matter, only how redisraft classifies them.

use std::ffi::{c_int, CStr};

use redis_module::raw;

extern "C" fn probe_set(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    // SAFETY: Redis calls command handlers on the main thread with a valid ctx, after
    // OnLoad filled the API pointers.
    unsafe {
        if argc != 3 {
            return raw::RedisModule_WrongArity.unwrap()(ctx);
        }
        raw::RedisModule_ReplyWithSimpleString.unwrap()(ctx, c"OK".as_ptr())
    }
}

extern "C" fn probe_get(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    // SAFETY: as in probe_set.
    unsafe {
        if argc != 2 {
            return raw::RedisModule_WrongArity.unwrap()(ctx);
        }
        raw::RedisModule_ReplyWithNull.unwrap()(ctx)
    }
}

type Handler =
    extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

const COMMANDS: [(&CStr, Handler, &CStr); 2] = [
    (c"probe.set", probe_set, c"write"),
    (c"probe.get", probe_get, c"readonly"),
];

/// # Safety
/// Called by Redis with a valid load context.
#[no_mangle]
pub unsafe extern "C" fn RedisModule_OnLoad(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    // SAFETY: Redis calls OnLoad on the main thread with a valid ctx; Init fills the API
    // pointers used next.
    unsafe {
        if raw::Export_RedisModule_Init(
            ctx,
            c"probe".as_ptr(),
            1,
            raw::REDISMODULE_APIVER_1 as c_int,
        ) == raw::Status::Err as c_int
        {
            return raw::Status::Err as c_int;
        }
        for (name, handler, flags) in COMMANDS {
            let status = raw::RedisModule_CreateCommand.unwrap()(
                ctx,
                name.as_ptr(),
                Some(handler),
                flags.as_ptr(),
                1,
                1,
                1,
            );
            if status == raw::Status::Err as c_int {
                return status;
            }
        }
    }
    raw::Status::Ok as c_int
}
