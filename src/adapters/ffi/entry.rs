//! The module entry point, `RedisModule_OnLoad`, and the command trampolines: the one
//! place of `ffi` that calls into the Redis side (`redis::module`), since that is where
//! the program starts. The rest of `ffi` imports no adapter.

use std::ffi::{c_int, CString};

use redis_module::raw;

use super::{api, RawCtx};

/// Dispatches a command by its index in `module::COMMANDS`; one extern fn per index
/// because Redis gives command callbacks no user data.
fn dispatch(
    index: usize,
    ctx: RawCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    let context = redis_module::Context::new(ctx);
    let args = redis_module::decode_args(ctx, argv, argc);
    let (_, handler, _) = crate::adapters::redis::module::COMMANDS[index];
    context.reply(handler(&context, args)) as c_int
}

macro_rules! command_trampolines {
    ($($name:ident => $index:expr),* $(,)?) => {
        $(
            unsafe extern "C" fn $name(ctx: RawCtx, argv: *mut *mut raw::RedisModuleString, argc: c_int) -> c_int {
                dispatch($index, ctx, argv, argc)
            }
        )*
        const TRAMPOLINES: &[unsafe extern "C" fn(RawCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int] = &[$($name),*];
    };
}

command_trampolines!(
    command_0 => 0, command_1 => 1, command_2 => 2, command_3 => 3, command_4 => 4, command_5 => 5,
    command_6 => 6, command_7 => 7, command_8 => 8, command_9 => 9, command_10 => 10,
    command_11 => 11, command_12 => 12, command_13 => 13, command_14 => 14, command_15 => 15,
    command_16 => 16, command_17 => 17, command_18 => 18, command_19 => 19, command_20 => 20,
    command_21 => 21, command_22 => 22, command_23 => 23,
);

const _: () = assert!(
    crate::adapters::redis::module::COMMANDS.len() <= TRAMPOLINES.len(),
    "add command trampolines"
);

unsafe extern "C" fn info_callback(ctx: *mut raw::RedisModuleInfoCtx, for_crash_report: c_int) {
    crate::adapters::redis::module::info_handler(
        &redis_module::InfoContext::new(ctx),
        for_crash_report != 0,
    );
}

/// The module entry point. Written by hand rather than with `redis_module!`, whose command
/// registration needs `RedisModule_SetCommandACLCategories` (Redis 7.2+) and so refuses
/// to load on Redis 7.0.
///
/// # Safety
/// Called by Redis with a valid load context and argv.
#[no_mangle]
pub unsafe extern "C" fn RedisModule_OnLoad(
    ctx: RawCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    let commands = crate::adapters::redis::module::COMMANDS;
    // Checked at compile time too (see below); a panic here could not even allocate.
    assert!(
        commands.len() <= TRAMPOLINES.len(),
        "add command trampolines"
    );
    // SAFETY: Redis calls OnLoad on the main thread with a valid ctx; Init fills the API
    // function pointers every other call relies on.
    unsafe {
        if raw::Export_RedisModule_Init(
            ctx,
            c"raft".as_ptr(),
            1,
            raw::REDISMODULE_APIVER_1 as c_int,
        ) == raw::Status::Err as c_int
        {
            return raw::Status::Err as c_int;
        }
    }
    let context = redis_module::Context::new(ctx);
    // The crate's logger reads this context.
    let _ = redis_module::MODULE_CONTEXT.set_context(&context);
    let args = redis_module::decode_args(ctx, argv, argc);
    for (index, (name, _, flags)) in commands.iter().enumerate() {
        let name = CString::new(*name).expect("command names have no NUL");
        let flags = CString::new(*flags).expect("command flags have no NUL");
        // SAFETY: ctx is the load context; name/flags are copied by Redis.
        let status = unsafe {
            api(raw::RedisModule_CreateCommand, "CreateCommand")(
                ctx,
                name.as_ptr(),
                Some(TRAMPOLINES[index]),
                flags.as_ptr(),
                0,
                0,
                0,
            )
        };
        if status == raw::Status::Err as c_int {
            context.log_warning(&format!("raft: cannot register command {name:?}"));
            return raw::Status::Err as c_int;
        }
    }
    raw::register_info_function(ctx, Some(info_callback));
    crate::adapters::redis::module::init(&context, &args) as c_int
}
