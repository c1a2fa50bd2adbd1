//! The C entry points called from Rust: failures come back as typed codes with a
//! readable `codervpn_last_error`, and nothing is left running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::{CStr, CString};
use std::ptr;

use codervpn::*;
use codervpn_testbed::{Testbed, TestbedConfig};

fn no_callbacks() -> codervpn_callbacks {
    codervpn_callbacks {
        network_settings: None,
        peer_update: None,
        log: None,
    }
}

fn config(url: &CStr, token: &CStr) -> codervpn_config {
    codervpn_config {
        coder_url: url.as_ptr(),
        session_token: token.as_ptr(),
        headers: ptr::null(),
        headers_len: 0,
        device_id: ptr::null(),
        device_os: ptr::null(),
        coder_desktop_version: ptr::null(),
        socks5_addr: ptr::null(),
    }
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(codervpn_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn start(cfg: &codervpn_config) -> (i32, *mut codervpn_session) {
    start_with(cfg, no_callbacks())
}

/// `codervpn_start` in userspace mode with `callbacks` and a NULL context.
fn start_with(
    cfg: &codervpn_config,
    callbacks: codervpn_callbacks,
) -> (i32, *mut codervpn_session) {
    let mut session = ptr::null_mut();
    let rc = unsafe { codervpn_start(cfg, -1, callbacks, ptr::null_mut(), &mut session) };
    (rc, session)
}

/// A testbed on its own runtime, with its URL and token as C strings.
fn testbed() -> (tokio::runtime::Runtime, Testbed, CString, CString) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let testbed = rt
        .block_on(Testbed::start(TestbedConfig::default()))
        .unwrap();
    let url = CString::new(testbed.url().as_str()).unwrap();
    let token = CString::new(testbed.token()).unwrap();
    (rt, testbed, url, token)
}

#[test]
fn rejected_token_fails_the_start_with_the_reason() {
    let (_rt, _testbed, url, _) = testbed();
    let token = CString::new("not-the-token").unwrap();

    let (rc, session) = start(&config(&url, &token));

    assert_eq!(rc, CODERVPN_ERR_START_FAILED, "{}", last_error());
    assert!(session.is_null());
    assert!(last_error().contains("401"), "{}", last_error());
}

#[test]
fn unreachable_deployment_fails_the_start() {
    let url = CString::new("http://127.0.0.1:1").unwrap();
    let token = CString::new("t").unwrap();

    let (rc, session) = start(&config(&url, &token));

    assert_eq!(rc, CODERVPN_ERR_START_FAILED);
    assert!(session.is_null());
    assert!(!last_error().is_empty());
}

#[test]
fn start_from_a_tokio_thread_is_refused() {
    let url = CString::new("http://127.0.0.1:1").unwrap();
    let token = CString::new("t").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let (rc, session) = rt.block_on(async { start(&config(&url, &token)) });

    assert_eq!(rc, CODERVPN_ERR_WRONG_THREAD);
    assert!(session.is_null());
}

#[test]
fn null_out_pointer_is_refused() {
    let url = CString::new("http://127.0.0.1:1").unwrap();
    let token = CString::new("t").unwrap();
    let cfg = config(&url, &token);

    let rc = unsafe { codervpn_start(&cfg, -1, no_callbacks(), ptr::null_mut(), ptr::null_mut()) };

    assert_eq!(rc, CODERVPN_ERR_NULL_ARGUMENT);
    assert!(last_error().contains("out"), "{}", last_error());
}

#[test]
fn version_names_the_crate_and_the_coder_release() {
    let v = unsafe { CStr::from_ptr(codervpn_version()) }
        .to_str()
        .unwrap();
    assert!(
        v.starts_with(&format!("codervpn {} (Coder v", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
}

unsafe extern "C" fn refuse_settings(
    _ctx: *mut std::ffi::c_void,
    _request: *const u8,
    _request_len: usize,
    error: *mut std::ffi::c_char,
    error_len: usize,
) -> i32 {
    let msg = b"no routes for you\0";
    assert!(error_len >= msg.len());
    unsafe { ptr::copy_nonoverlapping(msg.as_ptr().cast(), error, msg.len()) };
    7
}

#[test]
fn refused_network_settings_fail_the_start_with_the_hosts_message() {
    let (_rt, _testbed, url, token) = testbed();
    let callbacks = codervpn_callbacks {
        network_settings: Some(refuse_settings),
        ..no_callbacks()
    };
    let (rc, session) = start_with(&config(&url, &token), callbacks);

    assert_eq!(rc, CODERVPN_ERR_START_FAILED, "{}", last_error());
    assert!(session.is_null());
    assert!(
        last_error().contains("no routes for you"),
        "{}",
        last_error()
    );
}

#[test]
fn stop_from_a_tokio_thread_is_refused_and_the_session_stays_valid() {
    let (rt, _testbed, url, token) = testbed();
    let (rc, session) = start(&config(&url, &token));
    assert_eq!(rc, CODERVPN_OK, "{}", last_error());
    let addr = session as usize;

    let refused = rt.block_on(async { unsafe { codervpn_stop(addr as *mut codervpn_session) } });
    let stopped = unsafe { codervpn_stop(session) };

    assert_eq!(refused, CODERVPN_ERR_WRONG_THREAD);
    assert_eq!(stopped, CODERVPN_OK, "{}", last_error());
}

/// While set, `blocking_peer_update` holds its thread (up to 30 s).
static HOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe extern "C" fn blocking_peer_update(_ctx: *mut std::ffi::c_void, _: *const u8, _: usize) {
    use std::sync::atomic::Ordering;
    HELD.fetch_add(1, Ordering::SeqCst);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while HOLD.load(Ordering::SeqCst) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A host callback that never returns cannot hold `codervpn_stop` for good: it returns
/// within the tunnel's stop plus 5 s, with an error that says a callback is still running
/// (issue #17). Without the bound it waited for the callback's thread.
#[test]
fn stop_returns_though_a_host_callback_never_does() {
    use std::sync::atomic::Ordering;
    let (_rt, _testbed, url, token) = testbed();
    let callbacks = codervpn_callbacks {
        peer_update: Some(blocking_peer_update),
        ..no_callbacks()
    };
    HOLD.store(true, Ordering::SeqCst);
    let (rc, session) = start_with(&config(&url, &token), callbacks);
    assert_eq!(rc, CODERVPN_OK, "{}", last_error());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while HELD.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        HELD.load(Ordering::SeqCst) > 0,
        "no peer update reached the host"
    );

    let started = std::time::Instant::now();
    let rc = unsafe { codervpn_stop(session) };
    let took = started.elapsed();
    HOLD.store(false, Ordering::SeqCst);

    assert_eq!(rc, CODERVPN_ERR_STOP_FAILED, "{}", last_error());
    assert!(
        last_error().contains("host callback(s) had not returned"),
        "{}",
        last_error()
    );
    assert!(
        took < std::time::Duration::from_secs(12),
        "stop took {took:?}"
    );
}
