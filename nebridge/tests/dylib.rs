//! The engine's cdylib loaded with `dlopen`, exactly as Coder Desktop loads Coder's Go dylib
//! (dylib-abi-and-compat.md §1): `OpenTunnel(readFD, writeFD)` on a background thread while
//! the manager handshakes on the other pipe ends.
//!
//! Needs `target/<profile>/libcodervpn_engine.so`, which `cargo build --workspace` and
//! `cargo nextest run --workspace` produce.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW, Symbol};

type OpenTunnelFn = unsafe extern "C" fn(i32, i32) -> i32;

fn dylib_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/libcodervpn_engine.so
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join("libcodervpn_engine.so");
    assert!(
        path.exists(),
        "{} is missing: build with `cargo build --workspace`",
        path.display()
    );
    path
}

fn load() -> Library {
    // SAFETY: loading our own cdylib; its initialisers are Rust's and have no side effects.
    unsafe { Library::open(Some(dylib_path()), RTLD_NOW | RTLD_LOCAL) }.unwrap()
}

fn open_tunnel(lib: &Library) -> Symbol<OpenTunnelFn> {
    // SAFETY: the symbol has exactly this C signature.
    unsafe { lib.get(b"OpenTunnel\0") }.unwrap()
}

/// Calls `OpenTunnel` on a thread (it blocks until the handshake), as the caller must.
fn call_on_thread(f: OpenTunnelFn, read: i32, write: i32) -> std::thread::JoinHandle<i32> {
    // SAFETY: f is OpenTunnel; the fds are valid for the duration of the call.
    std::thread::spawn(move || unsafe { f(read, write) })
}

fn tunnel_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "codervpn-tunnel")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnel_handshakes_serves_and_ends_its_thread() {
    let lib = load();
    let f = *open_tunnel(&lib);
    for round in 0..2 {
        let p = pipes();
        let call = call_on_thread(f, p.tunnel_read.as_raw_fd(), p.tunnel_write.as_raw_fd());
        let mut conn = manager(p.manager_read, p.manager_write).await;
        assert_eq!(call.join().unwrap(), 0, "round {round}");
        // The library duplicated its fds: the host may close its own right away.
        drop((p.tunnel_read, p.tunnel_write));
        full_exchange(&mut conn).await;
    }
    let deadline = Instant::now() + T;
    while tunnel_threads() > 0 {
        assert!(
            Instant::now() < deadline,
            "tunnel threads still running after stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // dlclose right after the tunnels ended must not crash anything.
    drop(lib);
    let lib = load();
    let p = pipes();
    let call = call_on_thread(
        *open_tunnel(&lib),
        p.tunnel_read.as_raw_fd(),
        p.tunnel_write.as_raw_fd(),
    );
    let mut conn = manager(p.manager_read, p.manager_write).await;
    assert_eq!(call.join().unwrap(), 0);
    drop((p.tunnel_read, p.tunnel_write));
    full_exchange(&mut conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_ends_when_the_host_closes_the_pipe() {
    let lib = load();
    let p = pipes();
    let call = call_on_thread(
        *open_tunnel(&lib),
        p.tunnel_read.as_raw_fd(),
        p.tunnel_write.as_raw_fd(),
    );
    let conn = manager(p.manager_read, p.manager_write).await;
    assert_eq!(call.join().unwrap(), 0);
    drop((p.tunnel_read, p.tunnel_write));
    let before = tunnel_threads();
    assert!(before >= 1);
    drop(conn);
    let deadline = Instant::now() + T;
    while tunnel_threads() >= before {
        assert!(
            Instant::now() < deadline,
            "tunnel thread did not end on EOF"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_read_fd_returns_minus_2() {
    let lib = load();
    let p = pipes();
    // SAFETY: OpenTunnel with an fd that is not open must fail cleanly.
    let rc = unsafe { open_tunnel(&lib)(987, p.tunnel_write.as_raw_fd()) };
    assert_eq!(rc, -2);
}

#[test]
fn bad_write_fd_returns_minus_3() {
    let lib = load();
    let p = pipes();
    // SAFETY: as above.
    let rc = unsafe { open_tunnel(&lib)(p.tunnel_read.as_raw_fd(), 988) };
    assert_eq!(rc, -3);
}

#[test]
fn descriptors_that_are_not_pipes_return_minus_4() {
    let lib = load();
    let file = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let p = pipes();
    // SAFETY: as above; /dev/null is open but is neither a pipe nor a socket.
    let rc = unsafe { open_tunnel(&lib)(file.as_raw_fd(), p.tunnel_write.as_raw_fd()) };
    assert_eq!(rc, -4);
}

#[test]
fn failed_handshake_returns_minus_5() {
    use std::io::Write;
    let lib = load();
    for header in [
        &b"codervpn manager 2.0\n"[..],
        b"ssh manager 1.3\n",
        &[b'x'; 300],
    ] {
        let p = pipes();
        let mut w = p.manager_write;
        w.write_all(header).unwrap();
        // SAFETY: valid pipe fds.
        let rc =
            unsafe { open_tunnel(&lib)(p.tunnel_read.as_raw_fd(), p.tunnel_write.as_raw_fd()) };
        assert_eq!(rc, -5, "{:?}", String::from_utf8_lossy(header));
    }
    // Manager hangs up before sending anything.
    let p = pipes();
    drop(p.manager_write);
    // SAFETY: valid pipe fds.
    let rc = unsafe { open_tunnel(&lib)(p.tunnel_read.as_raw_fd(), p.tunnel_write.as_raw_fd()) };
    assert_eq!(rc, -5);
}
