//! A utun device on macOS: a `PF_SYSTEM` control socket connected to the kernel's
//! `com.apple.net.utun_control`, which creates the next free `utunN`. Its packets carry a
//! 4-byte address family before the IP header (the engine's `Framing::Utun`). The device
//! goes away, with its addresses and routes, when the descriptor closes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const UTUN_CONTROL: &[u8] = b"com.apple.net.utun_control";

/// Creates a utun device; returns its descriptor and the name the kernel gave it.
pub fn create() -> io::Result<(OwnedFd, String)> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::PF_SYSTEM, libc::SOCK_DGRAM, libc::SYSPROTO_CONTROL) };
    if raw < 0 {
        return Err(context("socket(PF_SYSTEM)"));
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ctl_info is plain data; all-zero is a valid value.
    let mut info: libc::ctl_info = unsafe { std::mem::zeroed() };
    for (dst, src) in info.ctl_name.iter_mut().zip(UTUN_CONTROL) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: CTLIOCGINFO reads the name and fills ctl_id in a ctl_info we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::CTLIOCGINFO, &mut info) } < 0 {
        return Err(context("ioctl(CTLIOCGINFO)"));
    }
    // SAFETY: sockaddr_ctl is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ctl = unsafe { std::mem::zeroed() };
    addr.sc_len = std::mem::size_of::<libc::sockaddr_ctl>() as u8;
    addr.sc_family = libc::AF_SYSTEM as u8;
    addr.ss_sysaddr = libc::AF_SYS_CONTROL as u16;
    addr.sc_id = info.ctl_id;
    addr.sc_unit = 0; // the kernel picks the next free utun
    // SAFETY: connect(2) reads a sockaddr_ctl of the given length that we own.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ctl).cast(),
            std::mem::size_of::<libc::sockaddr_ctl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(context("connect(utun_control)"));
    }
    let mut name = [0u8; libc::IFNAMSIZ];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `name`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SYSPROTO_CONTROL,
            libc::UTUN_OPT_IFNAME,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(context("getsockopt(UTUN_OPT_IFNAME)"));
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok((fd, String::from_utf8_lossy(&name[..end]).into_owned()))
}

fn context(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
