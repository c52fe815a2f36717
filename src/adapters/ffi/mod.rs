//! Every `unsafe` call into the Redis module API lives here, behind small safe functions.
//!
//! Pointers passed in (contexts, filter contexts, strings) are the ones Redis handed to
//! the module for the current callback; that is this module's contract with its callers,
//! hence the crate-level allowance of raw-pointer arguments in safe functions here.
//!
//! All functions must be called on the Redis main thread (the thread that runs command
//! handlers, filters and event-loop callbacks) unless their doc says otherwise.

#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr::NonNull;

use redis_module::raw;

pub mod alloc_probe;
pub mod data;
pub mod entry;

pub type RawCtx = *mut raw::RedisModuleCtx;

fn api<T>(function: Option<T>, name: &str) -> T {
    function.unwrap_or_else(|| panic!("Redis module API {name} is missing on this server"))
}

/// A reply produced by `call`; freed on drop.
pub struct CallReply(NonNull<raw::RedisModuleCallReply>);

// SAFETY: a CallReply is only created, read and freed on the main thread; it is moved to
// Redis' blocked-client machinery as an opaque pointer which Redis hands back on that thread.
unsafe impl Send for CallReply {}

impl CallReply {
    fn reply_type(&self) -> c_int {
        // SAFETY: the pointer is a live reply owned by self.
        unsafe { api(raw::RedisModule_CallReplyType, "CallReplyType")(self.0.as_ptr()) }
    }

    pub fn is_error(&self) -> bool {
        self.reply_type() == raw::REDISMODULE_REPLY_ERROR as c_int
    }

    /// A null bulk or null array reply.
    pub fn is_null(&self) -> bool {
        self.reply_type() == raw::REDISMODULE_REPLY_NULL as c_int
    }

    /// String content of a string, error or verbatim reply; empty for other types.
    pub fn bytes(&self) -> &[u8] {
        reply_bytes(self.0.as_ptr())
    }

    pub fn integer(&self) -> i64 {
        reply_integer(self.0.as_ptr())
    }

    pub fn len(&self) -> usize {
        // SAFETY: the pointer is a live reply owned by self.
        unsafe { api(raw::RedisModule_CallReplyLength, "CallReplyLength")(self.0.as_ptr()) }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `index` of an array reply, borrowed from self.
    pub fn element(&self, index: usize) -> Option<ReplyRef<'_>> {
        element_of(self.0.as_ptr(), index)
    }
}

impl Drop for CallReply {
    fn drop(&mut self) {
        // SAFETY: we own the reply and free it exactly once.
        unsafe { api(raw::RedisModule_FreeCallReply, "FreeCallReply")(self.0.as_ptr()) }
    }
}

/// A nested element of a CallReply; lives as long as its parent.
#[derive(Clone, Copy)]
pub struct ReplyRef<'a> {
    pointer: *mut raw::RedisModuleCallReply,
    _parent: std::marker::PhantomData<&'a CallReply>,
}

impl<'a> ReplyRef<'a> {
    pub fn bytes(&self) -> &'a [u8] {
        reply_bytes(self.pointer)
    }
    pub fn integer(&self) -> i64 {
        reply_integer(self.pointer)
    }
    pub fn len(&self) -> usize {
        // SAFETY: nested replies live as long as the parent CallReply.
        unsafe { api(raw::RedisModule_CallReplyLength, "CallReplyLength")(self.pointer) }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn element(&self, index: usize) -> Option<ReplyRef<'a>> {
        element_of(self.pointer, index)
    }
}

fn reply_bytes<'a>(pointer: *mut raw::RedisModuleCallReply) -> &'a [u8] {
    let mut len = 0usize;
    // SAFETY: pointer is a live reply; Redis returns NULL for non-string types.
    let data = unsafe {
        api(raw::RedisModule_CallReplyStringPtr, "CallReplyStringPtr")(pointer, &mut len)
    };
    if data.is_null() {
        return &[];
    }
    // SAFETY: Redis guarantees `len` readable bytes at `data` for the reply's lifetime.
    unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }
}

fn reply_integer(pointer: *mut raw::RedisModuleCallReply) -> i64 {
    // SAFETY: pointer is a live reply; non-integers give 0.
    unsafe { api(raw::RedisModule_CallReplyInteger, "CallReplyInteger")(pointer) }
}

fn element_of<'a>(pointer: *mut raw::RedisModuleCallReply, index: usize) -> Option<ReplyRef<'a>> {
    // SAFETY: pointer is a live reply; out-of-range or non-array gives NULL.
    let element = unsafe {
        api(
            raw::RedisModule_CallReplyArrayElement,
            "CallReplyArrayElement",
        )(pointer, index)
    };
    (!element.is_null()).then_some(ReplyRef {
        pointer: element,
        _parent: std::marker::PhantomData,
    })
}

/// Runs one command through `RedisModule_Call` with errors returned as replies.
/// `resp3` picks the protocol of the reply (the waiting client's protocol).
pub fn call(ctx: RawCtx, argv: &[Vec<u8>], resp3: bool) -> Result<CallReply, String> {
    call_with(ctx, argv, resp3, false)
}

/// Like `call`, but checked against the ACL user attached to `ctx`
/// (see `data::ModuleUser::attach`).
pub fn call_checked(ctx: RawCtx, argv: &[Vec<u8>], resp3: bool) -> Result<CallReply, String> {
    call_with(ctx, argv, resp3, true)
}

fn call_with(
    ctx: RawCtx,
    argv: &[Vec<u8>],
    resp3: bool,
    check_acl: bool,
) -> Result<CallReply, String> {
    call_prepared(ctx, argv, &mut data::Args::new(argv), resp3, check_acl)
}

/// Runs `argv` whose Redis strings the caller already made (`args`, same order), so a
/// command whose keys were looked up is not converted twice.
pub fn call_prepared(
    ctx: RawCtx,
    argv: &[Vec<u8>],
    args: &mut data::Args,
    resp3: bool,
    check_acl: bool,
) -> Result<CallReply, String> {
    let Some(name) = argv.first() else {
        return Err("ERR empty command".to_string());
    };
    let name = CString::new(name.as_slice()).map_err(|_| "ERR invalid command name".to_string())?;
    // No "E" flag: Redis 7.0 rejects it. Failures before execution come back as NULL + errno.
    let format: &[u8] = match (resp3, check_acl) {
        (false, false) => b"v\0",
        (true, false) => b"v3\0",
        (false, true) => b"Cv\0",
        (true, true) => b"Cv3\0",
    };
    let (strings, count) = args.after_name();
    // SAFETY: "v" takes (RedisModuleString **, size_t); ctx is a live context on the main
    // thread; the strings stay alive (owned by args) for the whole call.
    let reply = unsafe {
        api(raw::RedisModule_Call, "Call")(
            ctx,
            name.as_ptr(),
            format.as_ptr().cast::<c_char>(),
            strings,
            count,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    NonNull::new(reply)
        .map(CallReply)
        .ok_or_else(|| call_failure(&argv[0], errno))
}

/// The error a client would have seen for a command Redis refused to run.
fn call_failure(name: &[u8], errno: i32) -> String {
    let name = String::from_utf8_lossy(name);
    match errno {
        libc_errno::ENOENT => format!("ERR unknown command '{name}'"),
        libc_errno::EINVAL => format!("ERR wrong number of arguments for '{name}' command"),
        libc_errno::EACCES => {
            format!("NOPERM this user has no permissions to run the '{name}' command")
        }
        libc_errno::ENOSPC => "OOM command not allowed when used memory > 'maxmemory'.".to_string(),
        libc_errno::EBADF => "ERR internal: RedisModule_Call format refused".to_string(),
        libc_errno::EROFS => "READONLY You can't write against a read only replica.".to_string(),
        _ => format!("ERR command '{name}' could not be executed (errno {errno})"),
    }
}

/// The errno values RedisModule_Call documents, from Linux' errno.h.
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const EBADF: i32 = 9;
    pub const EACCES: i32 = 13;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
}

/// A context with the module attached, usable on the main thread outside any command,
/// e.g. in event-loop callbacks. Lives for the process lifetime.
pub fn detached_context(ctx: RawCtx) -> RawCtx {
    // SAFETY: ctx is the module's load context.
    unsafe {
        api(
            raw::RedisModule_GetDetachedThreadSafeContext,
            "GetDetachedThreadSafeContext",
        )(ctx)
    }
}

pub fn context_flags(ctx: RawCtx) -> u32 {
    // SAFETY: ctx is a live context.
    unsafe { api(raw::RedisModule_GetContextFlags, "GetContextFlags")(ctx) as u32 }
}

// ----- command filter -----

pub type FilterCtx = *mut raw::RedisModuleCommandFilterCtx;

pub fn register_command_filter(ctx: RawCtx, callback: unsafe extern "C" fn(FilterCtx)) -> bool {
    // SAFETY: ctx is the load context; callback is a 'static function.
    let filter = unsafe {
        api(
            raw::RedisModule_RegisterCommandFilter,
            "RegisterCommandFilter",
        )(ctx, Some(callback), 0)
    };
    !filter.is_null()
}

pub fn filter_arg_count(fctx: FilterCtx) -> usize {
    // SAFETY: fctx is the live filter context passed to the callback.
    unsafe {
        api(
            raw::RedisModule_CommandFilterArgsCount,
            "CommandFilterArgsCount",
        )(fctx) as usize
    }
}

/// Argument `position` of the filtered command, valid during the filter callback.
pub fn filter_arg<'a>(fctx: FilterCtx, position: usize) -> &'a [u8] {
    // SAFETY: fctx is live and position < count (checked by the caller's loop bounds).
    let string = unsafe {
        api(raw::RedisModule_CommandFilterArgGet, "CommandFilterArgGet")(fctx, position as c_int)
    };
    string_bytes(string)
}

/// Puts `word` in front of the filtered command (it becomes argv[0]).
pub fn filter_prepend(fctx: FilterCtx, word: &[u8]) {
    // SAFETY: Redis takes ownership of a string created with a NULL ctx.
    unsafe {
        let string = api(raw::RedisModule_CreateString, "CreateString")(
            std::ptr::null_mut(),
            word.as_ptr().cast::<c_char>(),
            word.len(),
        );
        api(
            raw::RedisModule_CommandFilterArgInsert,
            "CommandFilterArgInsert",
        )(fctx, 0, string);
    }
}

pub fn string_bytes<'a>(string: *const raw::RedisModuleString) -> &'a [u8] {
    if string.is_null() {
        return &[];
    }
    let mut len = 0usize;
    // SAFETY: string is a live RedisModuleString; the bytes live as long as it does.
    unsafe {
        let data = api(raw::RedisModule_StringPtrLen, "StringPtrLen")(string, &mut len);
        std::slice::from_raw_parts(data.cast::<u8>(), len)
    }
}

// ----- blocked clients -----

/// What a blocked client is answered with once its request resolves.
pub enum Answer {
    Reply(CallReply),
    Error(String),
    Simple(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Null,
    /// EXEC of a transaction whose watched keys changed.
    NullArray,
    Array(Vec<Answer>),
    /// Text that RESP3 clients get as a verbatim string (INFO).
    Verbatim(String),
}

pub struct BlockedClient(NonNull<raw::RedisModuleBlockedClient>);

// SAFETY: only touched on the main thread; Send lets it sit in tables owned by statics.
unsafe impl Send for BlockedClient {}

unsafe extern "C" fn answer_blocked_client(
    ctx: RawCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    // SAFETY: privdata is the Box<Answer> we passed to UnblockClient; Redis keeps it alive
    // until free_answer runs after this callback.
    unsafe {
        let answer = api(
            raw::RedisModule_GetBlockedClientPrivateData,
            "GetBlockedClientPrivateData",
        )(ctx)
        .cast::<Answer>();
        if let Some(answer) = answer.as_ref() {
            reply_answer(ctx, answer);
        }
    }
    raw::REDISMODULE_OK as c_int
}

unsafe extern "C" fn free_answer(_ctx: RawCtx, privdata: *mut c_void) {
    if !privdata.is_null() {
        // SAFETY: privdata came from Box::into_raw in unblock and is freed only here.
        drop(unsafe { Box::from_raw(privdata.cast::<Answer>()) });
    }
}

/// Blocks the client of the running command until `unblock`. No timeout: the driver
/// resolves every request (commit, loss of leadership, read expiry).
pub fn block_client(ctx: RawCtx) -> BlockedClient {
    // SAFETY: ctx is the context of a command being executed on the main thread.
    let handle = unsafe {
        api(raw::RedisModule_BlockClient, "BlockClient")(
            ctx,
            Some(answer_blocked_client),
            None,
            Some(free_answer),
            0,
        )
    };
    BlockedClient(NonNull::new(handle).expect("RedisModule_BlockClient returned NULL"))
}

/// Identity of a blocked client while it is blocked (Redis' handle; reused after unblock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(usize);

/// Told when Redis ends a cancellable wait itself: `Disconnected` (the client went away)
/// or `Unblocked` (`CLIENT UNBLOCK`, whose client gets the returned answer). The handle
/// stays ours to `unblock` (Redis then only frees it). The handler's answer is what a
/// `CLIENT UNBLOCK`ed client gets (`None`: the null array).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    Disconnected,
    Unblocked,
}

pub type CancelHandler = fn(ClientKey, Cancel) -> Option<Answer>;

thread_local! {
    /// Cancellable clients blocked and not yet unblocked by the module.
    static LIVE: std::cell::RefCell<std::collections::HashSet<ClientKey>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
    /// Those of them Redis has let go of, until the module unblocks their handle.
    static GONE: std::cell::RefCell<std::collections::HashSet<ClientKey>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
    static ON_CANCEL: std::cell::Cell<Option<CancelHandler>> = const { std::cell::Cell::new(None) };
}

/// Who is told about cancelled waits (set once at load).
pub fn set_cancel_handler(handler: CancelHandler) {
    ON_CANCEL.with(|cell| cell.set(Some(handler)));
}

fn cancelled(handle: *mut raw::RedisModuleBlockedClient, why: Cancel) -> Answer {
    let key = ClientKey(handle as usize);
    // A client that leaves after the module unblocked it (before Redis handled that) is
    // Redis' to free: its address may soon name another client, so it is not marked.
    if !LIVE.with(|live| live.borrow().contains(&key)) {
        return Answer::NullArray;
    }
    GONE.with(|gone| gone.borrow_mut().insert(key));
    ON_CANCEL
        .with(std::cell::Cell::get)
        .and_then(|handler| handler(key, why))
        .unwrap_or(Answer::NullArray)
}

unsafe extern "C" fn on_unblock_request(
    ctx: RawCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    // SAFETY: Redis calls this with the blocked client's context, whose handle it returns.
    let handle = unsafe {
        api(
            raw::RedisModule_GetBlockedClientHandle,
            "GetBlockedClientHandle",
        )(ctx)
    };
    let answer = cancelled(handle, Cancel::Unblocked);
    reply_answer(ctx, &answer);
    raw::REDISMODULE_OK as c_int
}

unsafe extern "C" fn on_disconnect(_ctx: RawCtx, handle: *mut raw::RedisModuleBlockedClient) {
    cancelled(handle, Cancel::Disconnected);
}

/// `block_client` for a wait Redis may end itself, as it ends its own blocking commands:
/// the client disconnects, or `CLIENT UNBLOCK` names it (which needs a timeout callback).
pub fn block_client_cancellable(ctx: RawCtx) -> BlockedClient {
    // SAFETY: ctx is the context of a command being executed on the main thread; the
    // callbacks are 'static and run on the main thread.
    let handle = unsafe {
        let handle = api(raw::RedisModule_BlockClient, "BlockClient")(
            ctx,
            Some(answer_blocked_client),
            Some(on_unblock_request),
            Some(free_answer),
            0,
        );
        if !handle.is_null() {
            api(
                raw::RedisModule_SetDisconnectCallback,
                "SetDisconnectCallback",
            )(handle, Some(on_disconnect));
            LIVE.with(|live| live.borrow_mut().insert(ClientKey(handle as usize)));
        }
        handle
    };
    BlockedClient(NonNull::new(handle).expect("RedisModule_BlockClient returned NULL"))
}

impl BlockedClient {
    pub fn key(&self) -> ClientKey {
        ClientKey(self.0.as_ptr() as usize)
    }

    /// Redis let go of this client (it disconnected or was unblocked): nobody reads an
    /// answer any more, and it must not wait again.
    pub fn is_gone(&self) -> bool {
        GONE.with(|gone| gone.borrow().contains(&self.key()))
    }
}

pub fn unblock(client: BlockedClient, answer: Answer) {
    // Redis frees the handle now: its address may name another client later.
    LIVE.with(|live| live.borrow_mut().remove(&client.key()));
    GONE.with(|gone| gone.borrow_mut().remove(&client.key()));
    let privdata = Box::into_raw(Box::new(answer)).cast::<c_void>();
    // SAFETY: the handle is live (blocked, not yet unblocked); ownership of privdata moves
    // to Redis, which calls free_answer.
    unsafe { api(raw::RedisModule_UnblockClient, "UnblockClient")(client.0.as_ptr(), privdata) };
}

/// Writes an answer to the client of `ctx` (a command context or a blocked-client reply ctx).
pub fn reply_answer(ctx: RawCtx, answer: &Answer) {
    // SAFETY: ctx is a live context with a client; strings are copied by Redis.
    unsafe {
        match answer {
            Answer::Reply(reply) => {
                api(raw::RedisModule_ReplyWithCallReply, "ReplyWithCallReply")(
                    ctx,
                    reply.0.as_ptr(),
                );
            }
            Answer::Error(message) => {
                let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
                api(raw::RedisModule_ReplyWithError, "ReplyWithError")(ctx, message.as_ptr());
            }
            Answer::Simple(text) => {
                let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
                api(
                    raw::RedisModule_ReplyWithSimpleString,
                    "ReplyWithSimpleString",
                )(ctx, text.as_ptr());
            }
            Answer::Integer(value) => {
                api(raw::RedisModule_ReplyWithLongLong, "ReplyWithLongLong")(ctx, *value);
            }
            Answer::Bulk(bytes) => {
                api(
                    raw::RedisModule_ReplyWithStringBuffer,
                    "ReplyWithStringBuffer",
                )(ctx, bytes.as_ptr().cast::<c_char>(), bytes.len());
            }
            Answer::Null => {
                api(raw::RedisModule_ReplyWithNull, "ReplyWithNull")(ctx);
            }
            Answer::NullArray => {
                api(raw::RedisModule_ReplyWithNullArray, "ReplyWithNullArray")(ctx);
            }
            Answer::Verbatim(text) => {
                api(
                    raw::RedisModule_ReplyWithVerbatimString,
                    "ReplyWithVerbatimString",
                )(ctx, text.as_ptr().cast::<c_char>(), text.len());
            }
            Answer::Array(items) => {
                api(raw::RedisModule_ReplyWithArray, "ReplyWithArray")(ctx, items.len() as _);
                for item in items {
                    reply_answer(ctx, item);
                }
            }
        }
    }
}

// ----- event loop and server events -----

/// Schedules `callback` on the main thread's event loop. Safe to call from any thread.
pub fn run_on_main_thread(callback: unsafe extern "C" fn(*mut c_void)) -> bool {
    // SAFETY: EventLoopAddOneShot is documented as thread-safe; callback is 'static.
    let status = unsafe {
        api(raw::RedisModule_EventLoopAddOneShot, "EventLoopAddOneShot")(
            Some(callback),
            std::ptr::null_mut(),
        )
    };
    status == raw::REDISMODULE_OK as c_int
}

pub type ServerEventCallback =
    unsafe extern "C" fn(RawCtx, raw::RedisModuleEvent, u64, *mut c_void);

pub fn subscribe_server_event(ctx: RawCtx, event_id: u64, callback: ServerEventCallback) -> bool {
    let event = raw::RedisModuleEvent {
        id: event_id,
        dataver: 1,
    };
    // SAFETY: ctx is the load context; callback is 'static.
    let status = unsafe {
        api(
            raw::RedisModule_SubscribeToServerEvent,
            "SubscribeToServerEvent",
        )(ctx, event, Some(callback))
    };
    status == raw::REDISMODULE_OK as c_int
}

/// Applies module configs given on the command line / config file; false if one was refused.
pub fn load_configs(ctx: RawCtx) -> bool {
    // SAFETY: API pointers are written once by RedisModule_Init; ctx is the load context
    // and every config has been registered.
    unsafe {
        match raw::RedisModule_LoadConfigs {
            Some(load) => load(ctx) == raw::REDISMODULE_OK as c_int,
            None => true,
        }
    }
}

/// A command the module registers: name, handler, Redis command flags.
pub type CommandSpec = (&'static str, CommandHandler, &'static str);
pub type CommandHandler =
    fn(&redis_module::Context, Vec<redis_module::RedisString>) -> redis_module::RedisResult;

// ----- fork -----

pub enum ForkSide {
    Parent { child_pid: i32 },
    Child,
}

/// Forks the server (copy-on-write view of the dataset) with Redis' own bookkeeping;
/// `on_done(exit_code, by_signal)` runs on the parent's main thread when the child exits.
pub fn fork(on_done: extern "C" fn(c_int, c_int, *mut c_void)) -> Result<ForkSide, String> {
    // SAFETY: main thread; the callback is 'static and takes no user data.
    let pid = unsafe {
        api(raw::RedisModule_Fork, "Fork")(
            Some(on_done as unsafe extern "C" fn(c_int, c_int, *mut c_void)),
            std::ptr::null_mut(),
        )
    };
    match pid {
        -1 => Err(format!("fork refused: {}", std::io::Error::last_os_error())),
        0 => Ok(ForkSide::Child),
        child_pid => Ok(ForkSide::Parent { child_pid }),
    }
}

/// Ends a forked child the way Redis expects (no atexit handlers of the parent).
pub fn exit_from_child(code: i32) -> ! {
    // SAFETY: only called in a child created by `fork`.
    unsafe {
        api(raw::RedisModule_ExitFromChild, "ExitFromChild")(code);
    }
    std::process::exit(code)
}

/// Whether the server process carries OpenSSL, i.e. was built with TLS. A server built
/// without TLS still registers every `tls-*` config (Valkey 9 here answers `tls-port 0`),
/// so the configs cannot tell; its symbols can: Redis and Valkey link with `-rdynamic`,
/// and a shared libssl is global too, so `SSL_CTX_new` resolves exactly when TLS is in.
pub fn server_has_tls() -> bool {
    extern "C" {
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }
    // SAFETY: a null handle is RTLD_DEFAULT (search the global symbols); the name is a
    // NUL-terminated literal; the result is only compared with null, never called.
    let symbol = unsafe { dlsym(std::ptr::null_mut(), c"SSL_CTX_new".as_ptr()) };
    !symbol.is_null()
}
