//! C ABI: `int32_t OpenTunnel(int32_t readFD, int32_t writeFD)`, a drop-in for Coder's Go
//! dylib (dylib-abi-and-compat.md §1), and the fd helpers the daemon shares with it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Once};
use std::time::Duration;

use codervpn_proto::fd::{FdReader, FdWriter};
use codervpn_proto::{Connection, TunnelSide, VersionList};
use tracing::warn;

use crate::device::dup;
use crate::session::join::TailnetConnector;
use crate::tunnel::{TunnelOptions, serve};

/// Handshake completed; the tunnel runs on its own thread.
pub const OPEN_OK: i32 = 0;
/// `dup(readFD)` failed.
pub const ERR_DUP_READ_FD: i32 = -2;
/// `dup(writeFD)` failed.
pub const ERR_DUP_WRITE_FD: i32 = -3;
/// Wrapping the duplicates failed (`fstat`, wrong file type).
pub const ERR_OPEN_PIPE: i32 = -4;
/// Tunnel construction failed (handshake failure, incompatible version, panic).
pub const ERR_NEW_TUNNEL: i32 = -5;

/// Opens a CoderVPN tunnel on two pipe ends: `read_fd` is what the manager writes to,
/// `write_fd` what it reads from. Both are duplicated; the caller keeps its own.
/// Blocks until the CoderVPN handshake has completed (0) or failed (negative).
#[unsafe(no_mangle)]
pub extern "C" fn OpenTunnel(read_fd: i32, write_fd: i32) -> i32 {
    std::panic::catch_unwind(|| open_tunnel(read_fd, write_fd)).unwrap_or(ERR_NEW_TUNNEL)
}

fn open_tunnel(read_fd: RawFd, write_fd: RawFd) -> i32 {
    pin_image();
    ignore_sigpipe_if_default();
    crate::logs::install_subscriber();
    let Ok(read) = dup(read_fd) else {
        return ERR_DUP_READ_FD;
    };
    let Ok(write) = dup(write_fd) else {
        return ERR_DUP_WRITE_FD;
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<i32>(1);
    let spawned = std::thread::Builder::new()
        .name("codervpn-tunnel".into())
        .spawn(move || run_tunnel_thread(read, write, tx));
    if spawned.is_err() {
        return ERR_NEW_TUNNEL;
    }
    rx.recv().unwrap_or(ERR_NEW_TUNNEL)
}

fn run_tunnel_thread(read: OwnedFd, write: OwnedFd, ready: std::sync::mpsc::SyncSender<i32>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => {
            let _ = ready.send(ERR_NEW_TUNNEL);
            return;
        }
    };
    rt.block_on(async move {
        let (reader, writer) = match (FdReader::new(read), FdWriter::new(write)) {
            (Ok(r), Ok(w)) => (r, w),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "OpenTunnel: cannot use the pipe descriptors");
                let _ = ready.send(ERR_OPEN_PIPE);
                return;
            }
        };
        let conn = match Connection::<TunnelSide>::handshake(reader, writer, VersionList::current())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "OpenTunnel: tunnel construction failed");
                let _ = ready.send(ERR_NEW_TUNNEL);
                return;
            }
        };
        let _ = ready.send(OPEN_OK);
        let opts = TunnelOptions::new(Arc::new(TailnetConnector::default()));
        serve(conn, opts, std::future::pending()).await;
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// Takes ownership of an inherited descriptor (`--rpc-read-fd 3`), after checking that it
/// is open. The caller must not use `fd` elsewhere.
pub fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is negative"),
        ));
    }
    // SAFETY: F_GETFD only queries flags; an invalid fd yields -1/EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("fd {fd} is not open: {e}"),
        ));
    }
    // SAFETY: the fd is open, and the caller hands us its only use.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(&owned)?;
    Ok(owned)
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on an fd we own; F_SETFD with FD_CLOEXEC changes only its flags.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps this image loaded for the life of the process, so that a host calling `dlclose`
/// right after the tunnel's EOF cannot unmap code a tunnel thread is still running.
fn pin_image() {
    static PIN: Once = Once::new();
    PIN.call_once(|| {
        // SAFETY: `info` is plain data filled by dladdr; the address is one of our own
        // functions; dlopen with RTLD_NOLOAD only takes a reference on an already-loaded
        // image, which we leak on purpose.
        unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            let addr = OpenTunnel as *const libc::c_void;
            if libc::dladdr(addr, &mut info) == 0 || info.dli_fname.is_null() {
                return;
            }
            let _ = libc::dlopen(
                info.dli_fname,
                libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
            );
        }
    });
}

/// A write to a closed pipe must be an EPIPE error, not a process-killing SIGPIPE. Like
/// Go's c-shared runtime, leave a disposition the host chose alone.
pub fn ignore_sigpipe_if_default() {
    // SAFETY: querying and then setting the SIGPIPE disposition; `old` is plain data.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_DFL
        {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    }
}
