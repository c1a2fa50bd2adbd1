//! Creating a Linux TUN interface (`/dev/net/tun`, `IFF_TUN | IFF_NO_PI`).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::Framing;

/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `TUNGETIFF` = `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;

/// `TUNSETOFFLOAD` = `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;

/// Creates (or attaches to) the TUN interface `name`; returns its descriptor, the name the
/// kernel gave it, and the framing its packets use: with `offload`, segmentation offload is
/// asked for (`IFF_VNET_HDR` + TCP segmentation, and UDP segmentation where the kernel has
/// it, Linux ≥ 6.2), and granted or not by the kernel. The interface disappears, with its
/// addresses and routes, when the last descriptor closes.
pub fn create_tun(name: &str, offload: bool) -> io::Result<(OwnedFd, String, Framing)> {
    if offload {
        let (fd, actual) = open_tun(name, libc::IFF_VNET_HDR)?;
        let tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        for flags in [tcp | TUN_F_USO4 | TUN_F_USO6, tcp] {
            // SAFETY: TUNSETOFFLOAD takes the flags by value.
            if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } == 0 {
                tracing::debug!(uso = flags & TUN_F_USO4 != 0, "TUN offload on");
                return Ok((fd, actual, Framing::Vnet));
            }
            tracing::debug!(error = %io::Error::last_os_error(), flags, "TUN offload refused");
        }
        drop(fd);
    }
    let (fd, actual) = open_tun(name, 0)?;
    Ok((fd, actual, Framing::Raw))
}

/// The framing of a TUN descriptor someone else opened (a manager's
/// `tunnel_file_descriptor`): [`Framing::Vnet`] when it was opened with `IFF_VNET_HDR`
/// (every packet then carries a `virtio_net_hdr`, whatever the offloads granted), else
/// [`Framing::Raw`]. A descriptor that is not a TUN is an error.
pub fn framing_of(fd: BorrowedFd<'_>) -> io::Result<Framing> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF fills an `ifreq` we own, laid out as the kernel expects.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNGETIFF: {e}")));
    }
    let flags = libc::c_int::from(req.flags);
    if flags & libc::IFF_NO_PI == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the TUN was opened without IFF_NO_PI (packet information headers are not supported)",
        ));
    }
    Ok(if flags & libc::IFF_VNET_HDR != 0 {
        Framing::Vnet
    } else {
        Framing::Raw
    })
}

fn open_tun(name: &str, extra_flags: libc::c_int) -> io::Result<(OwnedFd, String)> {
    if name.len() >= libc::IFNAMSIZ || name.contains('/') || name.contains(char::is_whitespace) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (at most 15 bytes, no '/' or spaces)"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("open /dev/net/tun: {e}")))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI | extra_flags) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an `ifreq` we own, laid out as the kernel expects.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
    }
    let len = req
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(libc::IFNAMSIZ);
    let actual = String::from_utf8_lossy(&req.name[..len]).into_owned();
    Ok((OwnedFd::from(file), actual))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (creates TUNs): fails without it unless `CODERVPN_SKIP_ROOT_TESTS=1`.
    #[test]
    fn the_framing_of_a_handed_over_tun_is_read_from_the_descriptor() {
        use std::os::fd::AsFd;
        if unsafe { libc::geteuid() } != 0 {
            // A skip must be asked for, as in the other root tests, never silent.
            assert!(
                std::env::var_os("CODERVPN_SKIP_ROOT_TESTS").is_some(),
                "needs root (creates TUNs); run as root, or set CODERVPN_SKIP_ROOT_TESTS=1 to skip"
            );
            eprintln!("SKIPPED (CODERVPN_SKIP_ROOT_TESTS): needs root");
            return;
        }
        let (raw, _, _) = create_tun("cvpnfrm0", false).unwrap();
        assert_eq!(framing_of(raw.as_fd()).unwrap(), Framing::Raw);
        let (vnet, _, framing) = create_tun("cvpnfrm1", true).unwrap();
        assert_eq!(framing, Framing::Vnet);
        assert_eq!(framing_of(vnet.as_fd()).unwrap(), Framing::Vnet);
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(framing_of(file.as_fd()).is_err());
    }

    #[test]
    fn rejects_names_the_kernel_cannot_take() {
        for bad in ["a/b", "sixteen-chars-xx", "has space"] {
            assert_eq!(
                create_tun(bad, false).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad}"
            );
        }
    }
}
