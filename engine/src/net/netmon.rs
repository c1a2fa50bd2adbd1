//! Network change monitor: tells the session at once when the host's links, addresses or
//! routes change (a Wi-Fi switch, a cable pulled, a VPN of someone else's coming up), so it
//! gathers its endpoints again, publishes them and re-probes without waiting for its
//! 20-second poll. Upstream's equivalent is `net/netmon` feeding magicsock's `ReSTUN`.
//!
//! On Linux: a `NETLINK_ROUTE` socket joined to the link, IPv4/IPv6 address and IPv4/IPv6
//! route multicast groups. Messages are not parsed: any burst of them is one "something
//! changed" (after [`SETTLE`] of quiet, so that the dozen messages of one change make one
//! refresh); the session compares what it gathers with what it published. A receive
//! buffer overrun (`ENOBUFS`: changes were lost) counts as a change too. Elsewhere there is
//! no monitor and the poll alone applies.

use std::time::Duration;

use tokio::sync::mpsc;

/// Quiet time after the last netlink message before a change is reported.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Starts the monitor on the current tokio runtime. The receiver yields `()` once per
/// settled burst of changes (several bursts while nobody reads collapse into one); the
/// monitor ends when the receiver is dropped.
#[cfg(target_os = "linux")]
pub fn spawn() -> std::io::Result<mpsc::Receiver<()>> {
    let socket = linux::RouteSocket::open()?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = socket.wait_for_messages() => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "network change monitor stopped");
                        return;
                    }
                }
                () = tx.closed() => return,
            }
            // Let the burst settle: every message within SETTLE of the last one is part of it.
            while let Ok(r) = tokio::time::timeout(SETTLE, socket.wait_for_messages()).await {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "network change monitor stopped");
                    return;
                }
            }
            tracing::debug!("network change");
            // Full: a change is already waiting to be read, which covers this one.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}

/// No monitor on this platform: the caller polls.
#[cfg(not(target_os = "linux"))]
pub fn spawn() -> std::io::Result<mpsc::Receiver<()>> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "no network change monitor on this platform",
    ))
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    // rtnetlink.h multicast groups (the legacy bit masks, valid for bind's nl_groups).
    const RTMGRP_LINK: u32 = 0x1;
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    const RTMGRP_IPV6_ROUTE: u32 = 0x400;
    const GROUPS: u32 = RTMGRP_LINK
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV6_ROUTE;

    pub struct RouteSocket(AsyncFd<OwnedFd>);

    impl RouteSocket {
        pub fn open() -> io::Result<Self> {
            // SAFETY: plain socket(2) call; the result is checked before use.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
            let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = GROUPS;
            // SAFETY: `addr` is a valid sockaddr_nl and its exact size is passed.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const addr).cast::<libc::sockaddr>(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: an OwnedFd is open and returns the same descriptor until dropped, and
            // the AsyncFd owns it for its whole life.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(io::Error::from)?;
            Ok(Self(fd))
        }

        /// Waits until at least one message arrived, then reads and drops every message
        /// queued. An overrun (`ENOBUFS`) is a message too: changes happened.
        pub async fn wait_for_messages(&self) -> io::Result<()> {
            let mut buf = [0u8; 8192];
            loop {
                let mut guard = self.0.readable().await?;
                let mut got = false;
                loop {
                    // SAFETY: `buf` is valid for writes of its length.
                    let n = unsafe {
                        libc::recv(
                            self.0.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            libc::MSG_DONTWAIT,
                        )
                    };
                    if n >= 0 {
                        got = true;
                        continue;
                    }
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) => break,
                        Some(libc::ENOBUFS) => got = true,
                        Some(libc::EINTR) => {}
                        _ => return Err(e),
                    }
                }
                guard.clear_ready();
                if got {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Runs `ip` in a fresh network namespace of this test's own: the change is real
    /// netlink traffic, seen by a monitor opened inside that namespace.
    #[test]
    fn an_address_added_in_the_namespace_is_reported_once_per_burst() {
        // A thread of its own so that unshare(CLONE_NEWNET) moves only this thread.
        std::thread::spawn(|| {
            // SAFETY: unshare on this thread only (CLONE_NEWNET affects the calling thread).
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                panic!("unshare(CLONE_NEWNET) needs root: {e}");
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut changes = spawn().expect("netlink route socket");
                let quiet = tokio::time::timeout(SETTLE * 3, changes.recv()).await;
                assert!(quiet.is_err(), "no change reported before one happens");
                // Three changes in one burst: the loopback link up, two addresses.
                let ip = |args: &[&str]| {
                    let out = std::process::Command::new("ip")
                        .args(args)
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "ip {args:?}: {out:?}");
                };
                ip(&["link", "set", "lo", "up"]);
                ip(&["addr", "add", "10.77.0.9/32", "dev", "lo"]);
                ip(&["addr", "add", "fd00:77::9/128", "dev", "lo"]);
                let got = tokio::time::timeout(Duration::from_secs(2), changes.recv()).await;
                assert_eq!(got, Ok(Some(())), "the change is reported");
                let again = tokio::time::timeout(SETTLE * 3, changes.recv()).await;
                assert!(again.is_err(), "one burst, one report");
                ip(&["addr", "del", "10.77.0.9/32", "dev", "lo"]);
                let got = tokio::time::timeout(Duration::from_secs(2), changes.recv()).await;
                assert_eq!(got, Ok(Some(())), "a removal is a change too");
            });
        })
        .join()
        .unwrap();
    }
}
