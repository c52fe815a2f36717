//! Module API calls about the dataset and its users: argument vectors, command keys,
//! key expiry, key scans, ACL users, filter rewrites, timers. Main thread only.

use std::ffi::{c_char, c_int, c_void};
use std::ptr::NonNull;

use redis_module::raw;

use super::{api, FilterCtx, RawCtx};

/// Redis strings for one command (`argv[0]` is the name), freed on drop.
pub struct Args(Vec<*mut raw::RedisModuleString>);

impl Args {
    pub fn new(argv: &[impl AsRef<[u8]>]) -> Args {
        Args(argv.iter().map(|arg| new_string(arg.as_ref())).collect())
    }

    pub(super) fn as_mut_ptr(&mut self) -> *mut *mut raw::RedisModuleString {
        self.0.as_mut_ptr()
    }

    /// The arguments after the name, as RedisModule_Call's "v" format takes them.
    pub(super) fn after_name(&mut self) -> (*mut *mut raw::RedisModuleString, usize) {
        match self.0.split_first_mut() {
            Some((_, rest)) => (rest.as_mut_ptr(), rest.len()),
            None => (self.0.as_mut_ptr(), 0),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Args {
    fn drop(&mut self) {
        for string in self.0.drain(..) {
            free_string(string);
        }
    }
}

fn new_string(bytes: &[u8]) -> *mut raw::RedisModuleString {
    // SAFETY: a NULL ctx makes the string ours to free; Redis copies the bytes.
    unsafe {
        api(raw::RedisModule_CreateString, "CreateString")(
            std::ptr::null_mut(),
            bytes.as_ptr().cast::<c_char>(),
            bytes.len(),
        )
    }
}

fn free_string(string: *mut raw::RedisModuleString) {
    // SAFETY: the string was created with a NULL ctx by new_string and is not used after.
    unsafe { api(raw::RedisModule_FreeString, "FreeString")(std::ptr::null_mut(), string) }
}

/// Positions of the key arguments of a command (`argv[0]` is the name), as the server
/// finds them, including commands whose keys move (EVAL, ZUNIONSTORE, ...).
pub fn command_keys(ctx: RawCtx, args: &mut Args) -> Vec<usize> {
    let mut count: c_int = 0;
    // SAFETY: ctx is live on the main thread; args are valid strings; the returned array
    // is allocated by Redis and freed with RedisModule_Free below.
    unsafe {
        let positions = api(raw::RedisModule_GetCommandKeys, "GetCommandKeys")(
            ctx,
            args.as_mut_ptr(),
            args.len() as c_int,
            &mut count,
        );
        if positions.is_null() {
            return Vec::new();
        }
        let found = std::slice::from_raw_parts(positions, count.max(0) as usize)
            .iter()
            .map(|&p| p as usize)
            .collect();
        api(raw::RedisModule_Free, "Free")(positions.cast::<c_void>());
        found
    }
}

/// `None` when the key does not exist, else its stored absolute expiry (if any).
pub fn key_expiry(ctx: RawCtx, key: &[u8]) -> Option<Option<i64>> {
    let name = new_string(key);
    let result = expiry_of(ctx, name);
    free_string(name);
    result
}

/// `key_expiry` of the argument at `position` of a prepared command.
pub fn key_expiry_at(ctx: RawCtx, args: &Args, position: usize) -> Option<Option<i64>> {
    expiry_of(ctx, *args.0.get(position)?)
}

fn expiry_of(ctx: RawCtx, name: *mut raw::RedisModuleString) -> Option<Option<i64>> {
    // SAFETY: ctx is live on the main thread; name is a valid string; the key handle is
    // closed before return.
    unsafe {
        let handle =
            api(raw::RedisModule_OpenKey, "OpenKey")(ctx, name, raw::REDISMODULE_READ as c_int)
                .cast::<raw::RedisModuleKey>();
        if handle.is_null() {
            None
        } else {
            let kind = api(raw::RedisModule_KeyType, "KeyType")(handle);
            let result = if kind == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
                None
            } else {
                let expire = api(raw::RedisModule_GetAbsExpire, "GetAbsExpire")(handle);
                Some((expire >= 0).then_some(expire))
            };
            api(raw::RedisModule_CloseKey, "CloseKey")(handle);
            result
        }
    }
}

/// Replaces argument `position` of the filtered command.
pub fn filter_replace(fctx: FilterCtx, position: usize, value: &[u8]) {
    let string = new_string(value);
    // SAFETY: fctx is the live filter context; Redis takes ownership of the string.
    unsafe {
        api(
            raw::RedisModule_CommandFilterArgReplace,
            "CommandFilterArgReplace",
        )(fctx, position as c_int, string);
    }
}

/// Inserts an argument at `position` of the filtered command.
pub fn filter_insert(fctx: FilterCtx, position: usize, value: &[u8]) {
    let string = new_string(value);
    // SAFETY: fctx is the live filter context; Redis takes ownership of the string.
    unsafe {
        api(
            raw::RedisModule_CommandFilterArgInsert,
            "CommandFilterArgInsert",
        )(fctx, position as c_int, string);
    }
}

/// The id Redis gives the client of a command context.
pub fn client_id(ctx: RawCtx) -> u64 {
    // SAFETY: ctx is the live context of a client command.
    unsafe { api(raw::RedisModule_GetClientId, "GetClientId")(ctx) }
}

/// Name of the ACL user the client of `ctx` is authenticated as.
pub fn current_user_name(ctx: RawCtx) -> Option<String> {
    // SAFETY: ctx is the live context of a client command; the string is freed below.
    unsafe {
        let name = api(raw::RedisModule_GetCurrentUserName, "GetCurrentUserName")(ctx);
        if name.is_null() {
            return None;
        }
        let text = String::from_utf8_lossy(super::string_bytes(name)).into_owned();
        free_string(name);
        Some(text)
    }
}

/// An ACL user as the module API sees it; freed on drop.
pub struct ModuleUser(NonNull<raw::RedisModuleUser>);

impl ModuleUser {
    /// The server's user of that name, if it exists.
    pub fn find(name: &str) -> Option<ModuleUser> {
        let string = new_string(name.as_bytes());
        // SAFETY: the name string is valid; the returned user is freed on drop.
        let user = unsafe {
            api(
                raw::RedisModule_GetModuleUserFromUserName,
                "GetModuleUserFromUserName",
            )(string)
        };
        free_string(string);
        NonNull::new(user).map(ModuleUser)
    }

    /// Whether the user may run this command on these keys and channels.
    pub fn may_run(&self, args: &mut Args) -> bool {
        // SAFETY: the user handle is live; args are valid strings.
        let status = unsafe {
            api(
                raw::RedisModule_ACLCheckCommandPermissions,
                "ACLCheckCommandPermissions",
            )(self.0.as_ptr(), args.as_mut_ptr(), args.len() as c_int)
        };
        status == raw::REDISMODULE_OK as c_int
    }

    /// Makes `RedisModule_Call`s with the `C` flag on `ctx` run as this user.
    pub fn attach(&self, ctx: RawCtx) {
        // SAFETY: ctx is the module's own detached context; the user outlives the calls
        // made while attached (the caller detaches before dropping it).
        unsafe { api(raw::RedisModule_SetContextUser, "SetContextUser")(ctx, self.0.as_ptr()) }
    }

    pub fn detach(ctx: RawCtx) {
        // SAFETY: as in attach; NULL restores the context's default (unrestricted) user.
        unsafe { api(raw::RedisModule_SetContextUser, "SetContextUser")(ctx, std::ptr::null()) }
    }
}

impl Drop for ModuleUser {
    fn drop(&mut self) {
        // SAFETY: the user came from GetModuleUserFromUserName and is freed once.
        unsafe { api(raw::RedisModule_FreeModuleUser, "FreeModuleUser")(self.0.as_ptr()) }
    }
}

/// A position in the keyspace for [`scan_step`]; destroyed on drop.
pub struct ScanCursor(NonNull<raw::RedisModuleScanCursor>);

impl ScanCursor {
    pub fn new() -> ScanCursor {
        // SAFETY: creates a fresh cursor, destroyed on drop.
        let cursor = unsafe { api(raw::RedisModule_ScanCursorCreate, "ScanCursorCreate")() };
        ScanCursor(NonNull::new(cursor).expect("RedisModule_ScanCursorCreate returned NULL"))
    }
}

impl Default for ScanCursor {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScanCursor {
    fn drop(&mut self) {
        // SAFETY: the cursor is live and destroyed once.
        unsafe { api(raw::RedisModule_ScanCursorDestroy, "ScanCursorDestroy")(self.0.as_ptr()) }
    }
}

type ScanVisitor<'a> = &'a mut dyn FnMut(&[u8], Option<i64>);

unsafe extern "C" fn scan_callback(
    _ctx: RawCtx,
    keyname: *mut raw::RedisModuleString,
    key: *mut raw::RedisModuleKey,
    privdata: *mut c_void,
) {
    // SAFETY: privdata is the &mut ScanVisitor passed by scan_step, alive during the scan;
    // keyname and key are valid for this callback.
    unsafe {
        let visitor = &mut *privdata.cast::<ScanVisitor<'_>>();
        let expire = if key.is_null() {
            None
        } else {
            let value = api(raw::RedisModule_GetAbsExpire, "GetAbsExpire")(key);
            (value >= 0).then_some(value)
        };
        visitor(super::string_bytes(keyname), expire);
    }
}

/// Visits the next few keys with their stored expiry; false once the scan is complete.
pub fn scan_step(
    ctx: RawCtx,
    cursor: &ScanCursor,
    mut visit: impl FnMut(&[u8], Option<i64>),
) -> bool {
    let mut visitor: ScanVisitor<'_> = &mut visit;
    // SAFETY: ctx is live on the main thread; privdata points at `visitor`, which outlives
    // the call; the callback does not touch the keyspace.
    let more = unsafe {
        api(raw::RedisModule_Scan, "Scan")(
            ctx,
            cursor.0.as_ptr(),
            Some(scan_callback),
            (&mut visitor as *mut ScanVisitor<'_>).cast::<c_void>(),
        )
    };
    more != 0
}

/// Calls `callback` on the main thread after `period_ms`.
pub fn create_timer(
    ctx: RawCtx,
    period_ms: i64,
    callback: unsafe extern "C" fn(RawCtx, *mut c_void),
) {
    // SAFETY: ctx is a live module context; the callback is 'static and takes no data.
    unsafe {
        api(raw::RedisModule_CreateTimer, "CreateTimer")(
            ctx,
            period_ms,
            Some(callback),
            std::ptr::null_mut(),
        );
    }
}

/// The client id in a client-change server event.
pub fn client_change_id(data: *mut c_void) -> u64 {
    // SAFETY: for REDISMODULE_EVENT_CLIENT_CHANGE, data points at a RedisModuleClientInfo.
    unsafe { (*data.cast::<raw::RedisModuleClientInfo>()).id }
}

/// Calls `callback` for every keyspace event of these types (e.g. `REDISMODULE_NOTIFY_ALL`).
pub fn subscribe_keyspace_events(
    ctx: RawCtx,
    types: c_int,
    callback: unsafe extern "C" fn(
        RawCtx,
        c_int,
        *const c_char,
        *mut raw::RedisModuleString,
    ) -> c_int,
) -> bool {
    // SAFETY: ctx is the load context; the callback is 'static.
    let status = unsafe {
        api(
            raw::RedisModule_SubscribeToKeyspaceEvents,
            "SubscribeToKeyspaceEvents",
        )(ctx, types, Some(callback))
    };
    status == raw::REDISMODULE_OK as c_int
}

/// The key of a keyspace event callback.
pub fn event_key<'a>(key: *mut raw::RedisModuleString) -> &'a [u8] {
    super::string_bytes(key)
}
