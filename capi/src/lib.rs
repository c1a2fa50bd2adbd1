//! The C API for embedding the whole codervpn client — the tunnel engine *and* its manager
//! side — in a host such as a macOS `NEPacketTunnelProvider`: `codervpn_start` joins a
//! Coder deployment and calls back with network settings, peer updates and logs;
//! `codervpn_stop` tears everything down.
//!
//! Internally a session is the engine's embedded mode ([`codervpn_engine::host::embedded`]):
//! the engine runs in-process and is driven over a socket pair with the CoderVPN protocol,
//! the same frames `codervpn up` and a compat tunnel see, on a Tokio runtime the session
//! owns. The header `include/codervpn.h` is generated from this file by cbindgen
//! (`tests/header.rs` fails when it is stale; `CODERVPN_BLESS=1` rewrites it).
//!
//! Nothing here unwinds into C: every entry point catches panics and returns
//! [`CODERVPN_ERR_PANIC`].

#![allow(non_camel_case_types)]

mod session;
mod utun;

use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Success.
pub const CODERVPN_OK: i32 = 0;
/// A required pointer argument (or config field) was NULL.
pub const CODERVPN_ERR_NULL_ARGUMENT: i32 = -1;
/// A string argument was not valid UTF-8.
pub const CODERVPN_ERR_INVALID_UTF8: i32 = -2;
/// The configuration is invalid (URL, token, header, SOCKS5 address); see
/// `codervpn_last_error`.
pub const CODERVPN_ERR_INVALID_CONFIG: i32 = -3;
/// `tun_fd` is neither -1 nor an open descriptor.
pub const CODERVPN_ERR_BAD_FD: i32 = -4;
/// Creating the runtime, its threads or the internal socket pair failed.
pub const CODERVPN_ERR_RUNTIME: i32 = -5;
/// The CoderVPN handshake with the in-process tunnel failed.
pub const CODERVPN_ERR_HANDSHAKE: i32 = -6;
/// The tunnel could not start the session (deployment unreachable, token rejected,
/// network settings refused, timeout); `codervpn_last_error` has its message. Nothing
/// is left running.
pub const CODERVPN_ERR_START_FAILED: i32 = -7;
/// The tunnel did not confirm the stop in time; the session was released anyway.
pub const CODERVPN_ERR_STOP_FAILED: i32 = -8;
/// Called from a thread that runs a Tokio runtime, which includes every callback: the
/// call would deadlock. Nothing was done (a session passed in is still valid).
pub const CODERVPN_ERR_WRONG_THREAD: i32 = -9;
/// A bug: a panic inside the library was caught.
pub const CODERVPN_ERR_PANIC: i32 = -10;

/// `codervpn_log_fn` levels; the values of the CoderVPN protocol's `Log.Level`.
pub const CODERVPN_LOG_DEBUG: i32 = 0;
pub const CODERVPN_LOG_INFO: i32 = 1;
pub const CODERVPN_LOG_WARN: i32 = 2;
pub const CODERVPN_LOG_ERROR: i32 = 3;
pub const CODERVPN_LOG_CRITICAL: i32 = 4;
pub const CODERVPN_LOG_FATAL: i32 = 5;

/// Capacity of the buffer a `codervpn_network_settings_fn` may write its refusal
/// message into, NUL included.
pub const CODERVPN_ERROR_BUFFER_LEN: usize = 1024;

/// One extra HTTP header sent on every request to the deployment.
#[repr(C)]
pub struct codervpn_header {
    pub name: *const c_char,
    pub value: *const c_char,
}

/// What a session connects to. Strings are NUL-terminated UTF-8; the library copies
/// everything during `codervpn_start`, so the caller may free it afterwards.
#[repr(C)]
pub struct codervpn_config {
    /// The deployment, e.g. `https://coder.example.com`. Required.
    pub coder_url: *const c_char,
    /// A session token. Required.
    pub session_token: *const c_char,
    /// `headers_len` extra headers (NULL when 0).
    pub headers: *const codervpn_header,
    pub headers_len: usize,
    /// Device telemetry sent to the deployment (the `Coder-Desktop-Telemetry` header);
    /// each may be NULL.
    pub device_id: *const c_char,
    pub device_os: *const c_char,
    pub coder_desktop_version: *const c_char,
    /// Userspace mode only (`tun_fd` -1): serve SOCKS5 on this address, e.g.
    /// "127.0.0.1:1080". NULL: no proxy.
    pub socks5_addr: *const c_char,
}

/// Applies one network settings request. `request` is a serialized CoderVPN
/// `NetworkSettingsRequest` protobuf (vpn.proto), a *diff* to merge into the current
/// settings as manager-behaviour.md §5 describes. Return 0 when applied; otherwise
/// non-zero, with a NUL-terminated reason written into `error` (capacity `error_len`).
/// Called one request at a time, in order, on a library thread that may block until
/// the settings are applied.
pub type codervpn_network_settings_fn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        request: *const u8,
        request_len: usize,
        error: *mut c_char,
        error_len: usize,
    ) -> i32,
>;

/// Receives one serialized CoderVPN `PeerUpdate` protobuf (vpn.proto). Valid only
/// during the call. Called on a library thread; keep it short.
pub type codervpn_peer_update_fn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, update: *const u8, update_len: usize)>;

/// Receives one log record: a `CODERVPN_LOG_*` level and a NUL-terminated UTF-8 line
/// (message, then `name=value` fields). Valid only during the call. Called on a library
/// thread; keep it short.
pub type codervpn_log_fn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, level: i32, message: *const c_char)>;

/// The host's callbacks; each may be NULL (network settings: treated as applied). They
/// run on library threads, never after `codervpn_stop` returned, and must not call
/// `codervpn_start` or `codervpn_stop`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct codervpn_callbacks {
    pub network_settings: codervpn_network_settings_fn,
    pub peer_update: codervpn_peer_update_fn,
    pub log: codervpn_log_fn,
}

/// A running session (opaque).
pub struct codervpn_session {
    inner: session::Session,
}

/// Starts a session: joins the deployment in `cfg` with the packet device `tun_fd` (a
/// utun/TUN descriptor, duplicated by the library, the caller keeps its own), or in
/// userspace mode when `tun_fd` is -1. Blocks until the session started or failed —
/// network settings callbacks arrive meanwhile, so never call it on the thread those
/// callbacks need. `ctx` is passed to every callback. On `CODERVPN_OK`, `*out` is the
/// session, to be ended with `codervpn_stop`; otherwise `*out` is NULL.
///
/// # Safety
///
/// `cfg` and `out` must be NULL or valid; `cfg`'s strings NULL or NUL-terminated, and its
/// `headers` point to `headers_len` elements. `ctx` must be usable from any thread until
/// `codervpn_stop` returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn codervpn_start(
    cfg: *const codervpn_config,
    tun_fd: i32,
    callbacks: codervpn_callbacks,
    ctx: *mut c_void,
    out: *mut *mut codervpn_session,
) -> i32 {
    guard(|| {
        if out.is_null() {
            return Err(Error::new(CODERVPN_ERR_NULL_ARGUMENT, "out is NULL"));
        }
        // SAFETY: `out` is non-NULL and valid per the contract.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: forwarded contract on `cfg`.
        let config = unsafe { session::Config::from_c(cfg, tun_fd) }?;
        let inner = session::Session::start(config, callbacks, ctx)?;
        let boxed = Box::into_raw(Box::new(codervpn_session { inner }));
        // SAFETY: as above.
        unsafe { *out = boxed };
        Ok(())
    })
}

/// Stops the session and frees it: asks the tunnel to stop, waits until every library
/// thread of the session ended (no callback runs after this returns `CODERVPN_OK`).
/// Returns `CODERVPN_OK`, or `CODERVPN_ERR_STOP_FAILED` when the tunnel did not confirm
/// (the session is freed all the same) — or when a callback of yours had not returned 5 s
/// after the tunnel stopped: then this returns anyway, and that callback keeps its thread
/// and may still use `ctx` until it returns. `CODERVPN_ERR_WRONG_THREAD` (from a callback)
/// frees nothing.
///
/// # Safety
///
/// `session` must be NULL or a pointer returned by `codervpn_start` not yet stopped.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn codervpn_stop(session: *mut codervpn_session) -> i32 {
    guard(|| {
        if session.is_null() {
            return Err(Error::new(CODERVPN_ERR_NULL_ARGUMENT, "session is NULL"));
        }
        session::refuse_runtime_thread()?;
        // SAFETY: a pointer from `codervpn_start`, handed back exactly once.
        let session = unsafe { Box::from_raw(session) };
        session.inner.stop()
    })
}

/// The utun descriptor of the packet tunnel provider this process is, found by scanning
/// descriptors 0 to 1024 for a `com.apple.net.utun_control` socket (manager-behaviour.md
/// §2); -1 when there is none, and always -1 off Apple platforms.
#[unsafe(no_mangle)]
pub extern "C" fn codervpn_utun_fd() -> i32 {
    catch_unwind(utun::find).unwrap_or(-1)
}

/// This library's version, e.g. "codervpn 0.1.0 (Coder v2.24.3)". Static; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn codervpn_version() -> *const c_char {
    static VERSION: std::sync::OnceLock<CString> = std::sync::OnceLock::new();
    catch_unwind(|| {
        VERSION
            .get_or_init(|| {
                let v = format!(
                    "codervpn {} (Coder {})",
                    env!("CARGO_PKG_VERSION"),
                    codervpn_engine::host::CODER_VERSION
                );
                CString::new(v).unwrap_or_default()
            })
            .as_ptr()
    })
    .unwrap_or(EMPTY.as_ptr())
}

/// What a string-returning entry point answers when it cannot answer.
static EMPTY: &CStr = c"";

/// The message of the last failed `codervpn_start`/`codervpn_stop` on this thread
/// ("" when none). Valid until the next call of either on this thread; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn codervpn_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ptr())).unwrap_or(EMPTY.as_ptr())
}

/// A failed call: its code and what happened.
#[derive(Debug)]
pub(crate) struct Error {
    code: i32,
    message: String,
}

impl Error {
    pub(crate) fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

thread_local! {
    static LAST_ERROR: std::cell::RefCell<CString> = std::cell::RefCell::new(CString::default());
}

/// Runs an entry point: no unwinding, the error's message kept for `codervpn_last_error`.
fn guard(f: impl FnOnce() -> Result<(), Error>) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::new(
            CODERVPN_ERR_PANIC,
            "internal error (panic); this is a bug",
        ))
    });
    let (code, message) = match result {
        Ok(()) => (CODERVPN_OK, String::new()),
        Err(e) => (e.code, e.message),
    };
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
    code
}

/// A required C string as UTF-8.
///
/// # Safety
///
/// `p` must be NULL or NUL-terminated.
pub(crate) unsafe fn required_str(p: *const c_char, what: &str) -> Result<String, Error> {
    // SAFETY: forwarded.
    match unsafe { optional_str(p, what) }? {
        Some(s) => Ok(s),
        None => Err(Error::new(
            CODERVPN_ERR_NULL_ARGUMENT,
            format!("{what} is NULL"),
        )),
    }
}

/// An optional C string as UTF-8 (`None` for NULL).
///
/// # Safety
///
/// `p` must be NULL or NUL-terminated.
pub(crate) unsafe fn optional_str(p: *const c_char, what: &str) -> Result<Option<String>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated per the contract.
    let s = unsafe { CStr::from_ptr(p) };
    match s.to_str() {
        Ok(s) => Ok(Some(s.to_owned())),
        Err(e) => Err(Error::new(
            CODERVPN_ERR_INVALID_UTF8,
            format!("{what} is not UTF-8: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real panic inside an entry point's body comes back as an error code with a
    /// message, and the caller goes on (issue #17).
    #[test]
    fn a_panic_becomes_an_error_code_not_an_unwind() {
        let code = guard(|| panic!("boom"));
        assert_eq!(code, CODERVPN_ERR_PANIC);
        // SAFETY: the library's own NUL-terminated message.
        let message = unsafe { CStr::from_ptr(codervpn_last_error()) }.to_string_lossy();
        assert_eq!(message, "internal error (panic); this is a bug");
        assert_eq!(guard(|| Ok(())), CODERVPN_OK, "the next call works");
    }
}
