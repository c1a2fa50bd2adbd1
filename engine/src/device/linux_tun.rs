//! Creating a Linux TUN interface (`/dev/net/tun`, `IFF_TUN | IFF_NO_PI`).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates (or attaches to) the TUN interface `name`; returns its descriptor and the name
/// the kernel gave it. The interface disappears, with its addresses and routes, when the
/// last descriptor closes.
pub fn create_tun(name: &str) -> io::Result<(OwnedFd, String)> {
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
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
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

    #[test]
    fn rejects_names_the_kernel_cannot_take() {
        for bad in ["a/b", "sixteen-chars-xx", "has space"] {
            assert_eq!(
                create_tun(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad}"
            );
        }
    }
}
