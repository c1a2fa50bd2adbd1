//! Finding the packet tunnel provider's utun descriptor (manager-behaviour.md §2, the
//! technique of WireGuard for Apple): the first descriptor whose peer is a kernel control
//! socket (`AF_SYSTEM`) with the id of `com.apple.net.utun_control`.
//!
//! The scan is a pure function over two probes so Linux tests cover it; the probes are
//! the only Apple code.

/// Descriptors scanned: 0 through this, inclusive.
const MAX_FD: i32 = 1024;
/// `AF_SYSTEM` on Apple platforms.
const AF_SYSTEM: u8 = 32;

/// The utun descriptor, or -1.
pub(crate) fn find() -> i32 {
    #[cfg(target_vendor = "apple")]
    {
        scan(apple::peer_control, apple::utun_control_id).unwrap_or(-1)
    }
    #[cfg(not(target_vendor = "apple"))]
    {
        -1
    }
}

/// The first fd in 0..=MAX_FD whose peer is an `AF_SYSTEM` control with the utun
/// control's id. `peer(fd)` gives `(sc_family, sc_id)` when `getpeername` works;
/// `control_id(fd)` resolves the utun control's id (`CTLIOCGINFO`), asked once, on the
/// first `AF_SYSTEM` descriptor.
#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
fn scan(
    mut peer: impl FnMut(i32) -> Option<(u8, u32)>,
    mut control_id: impl FnMut(i32) -> Option<u32>,
) -> Option<i32> {
    let mut utun_id: Option<Option<u32>> = None;
    for fd in 0..=MAX_FD {
        let Some((family, sc_id)) = peer(fd) else {
            continue;
        };
        if family != AF_SYSTEM {
            continue;
        }
        let id = (*utun_id.get_or_insert_with(|| control_id(fd)))?;
        if sc_id == id {
            return Some(fd);
        }
    }
    None
}

#[cfg(target_vendor = "apple")]
mod apple {
    //! `<sys/kern_control.h>` and `<sys/sys_domain.h>`, declared here so the layout is
    //! visible next to its use.

    use std::mem::{size_of, zeroed};

    /// `_IOWR('N', 3, struct ctl_info)`.
    const CTLIOCGINFO: libc::c_ulong = 0xC064_4E03;
    const UTUN_CONTROL_NAME: &[u8] = b"com.apple.net.utun_control";

    #[repr(C)]
    struct CtlInfo {
        ctl_id: u32,
        ctl_name: [libc::c_char; 96],
    }

    #[repr(C)]
    struct SockaddrCtl {
        sc_len: u8,
        sc_family: u8,
        ss_sysaddr: u16,
        sc_id: u32,
        sc_unit: u32,
        sc_reserved: [u32; 5],
    }

    pub(super) fn peer_control(fd: i32) -> Option<(u8, u32)> {
        // SAFETY: plain data, zero is a valid value.
        let mut addr: SockaddrCtl = unsafe { zeroed() };
        let mut len = size_of::<SockaddrCtl>() as libc::socklen_t;
        // SAFETY: `addr` is writable for `len` bytes; an fd that is not a socket fails.
        let rc = unsafe { libc::getpeername(fd, (&raw mut addr).cast(), &mut len) };
        (rc == 0).then_some((addr.sc_family, addr.sc_id))
    }

    pub(super) fn utun_control_id(fd: i32) -> Option<u32> {
        // SAFETY: plain data, zero is a valid value.
        let mut info: CtlInfo = unsafe { zeroed() };
        for (dst, src) in info.ctl_name.iter_mut().zip(UTUN_CONTROL_NAME) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: CTLIOCGINFO reads the name and writes the id of `info`, which we own.
        let rc = unsafe { libc::ioctl(fd, CTLIOCGINFO, &raw mut info) };
        (rc == 0).then_some(info.ctl_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_af_system_fd_with_the_utun_control_id() {
        let peer = |fd| match fd {
            3 => Some((2, 0)),          // a TCP socket
            5 => Some((AF_SYSTEM, 9)),  // another kernel control
            7 => Some((AF_SYSTEM, 42)), // utun
            8 => Some((AF_SYSTEM, 42)), // a second utun
            _ => None,
        };
        let mut resolved = 0;
        let found = scan(peer, |_| {
            resolved += 1;
            Some(42)
        });
        assert_eq!(found, Some(7));
        assert_eq!(resolved, 1, "the control id is resolved once");
    }

    #[test]
    fn no_kernel_control_socket_means_none() {
        assert_eq!(scan(|_| None, |_| Some(1)), None);
        assert_eq!(scan(|fd| (fd == 4).then_some((2, 1)), |_| Some(1)), None);
    }

    #[test]
    fn unresolvable_control_id_means_none() {
        assert_eq!(scan(|_| Some((AF_SYSTEM, 1)), |_| None), None);
    }

    #[test]
    fn off_apple_there_is_no_utun() {
        if cfg!(not(target_vendor = "apple")) {
            assert_eq!(find(), -1);
        }
    }
}
