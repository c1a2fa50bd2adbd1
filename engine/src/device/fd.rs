//! A packet device on a file descriptor (Linux TUN, macOS utun, or a datagram socketpair
//! standing in for either in tests).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use std::sync::Mutex;

use super::Device;
use super::coalesce::Coalescer;
use super::offload::{self, VNET_HDR_LEN, VnetHdr};

/// How packets are framed on the descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Bare IP packets (Linux `IFF_NO_PI`).
    Raw,
    /// A 4-byte big-endian address family before each packet (macOS utun):
    /// `AF_INET` = 2, `AF_INET6` = 30.
    Utun,
    /// A 10-byte `virtio_net_hdr` before each packet (Linux `IFF_VNET_HDR` with TSO
    /// enabled): reads may be TCP super packets, cut into segments here.
    Vnet,
}

impl Framing {
    /// How packets are framed on a TUN descriptor a manager handed over: utun's family
    /// prefix on macOS; on Linux what the descriptor was opened with (a `virtio_net_hdr`
    /// when the manager asked for offloads, as `codervpn up` does), bare packets when that
    /// cannot be read.
    pub fn of_handed_over(fd: BorrowedFd<'_>) -> Framing {
        #[cfg(target_os = "linux")]
        {
            super::linux_tun::framing_of(fd).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the TUN's flags; taking bare IP packets");
                Framing::Raw
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = fd;
            if cfg!(target_os = "macos") {
                Framing::Utun
            } else {
                Framing::Raw
            }
        }
    }
}

/// macOS address family numbers, as utun uses them.
pub const UTUN_AF_INET: u32 = 2;
pub const UTUN_AF_INET6: u32 = 30;

/// A packet device over a non-blocking descriptor.
pub struct FdDevice {
    fd: AsyncFd<OwnedFd>,
    framing: Framing,
    /// Segments of the last super packet not yet handed out (Vnet framing only).
    pending: Mutex<Segments>,
    /// TCP segments being joined for one write (Vnet framing only).
    coalescer: Mutex<Coalescer>,
}

/// Segments cut from one super packet, stored back to back.
#[derive(Default)]
struct Segments {
    raw: Vec<u8>,
    scratch: Vec<u8>,
    arena: Vec<u8>,
    spans: Vec<(usize, usize)>,
    next: usize,
}

impl Segments {
    fn pop(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let &(start, len) = self.spans.get(self.next)?;
        self.next += 1;
        let Some(dst) = buf.get_mut(..len) else {
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer smaller than a segment",
            )));
        };
        dst.copy_from_slice(&self.arena[start..start + len]);
        Some(Ok(len))
    }
}

impl FdDevice {
    /// Takes `fd` (made non-blocking here). Must be called inside a tokio runtime.
    pub fn new(fd: OwnedFd, framing: Framing) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        // SAFETY: an OwnedFd is open and always returns the same descriptor until dropped,
        // and the AsyncFd owns it for its whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        let pending = Segments {
            raw: if framing == Framing::Vnet {
                vec![0; 65_536 + VNET_HDR_LEN]
            } else {
                Vec::new()
            },
            scratch: if framing == Framing::Vnet {
                vec![0; 65_536]
            } else {
                Vec::new()
            },
            ..Segments::default()
        };
        Ok(Self {
            fd,
            framing,
            pending: Mutex::new(pending),
            coalescer: Mutex::new(Coalescer::new()),
        })
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    fn read_once(&self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.fd.get_ref().as_raw_fd();
        match self.framing {
            Framing::Vnet => {
                let mut p = self
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(r) = p.pop(buf) {
                    return r;
                }
                let Segments {
                    raw,
                    scratch,
                    arena,
                    spans,
                    next,
                } = &mut *p;
                // SAFETY: reading into a live, exclusively borrowed buffer of its own length.
                let n = result(unsafe { libc::read(fd, raw.as_mut_ptr().cast(), raw.len()) })?;
                let hdr = VnetHdr::parse(&raw[..n])?;
                spans.clear();
                arena.clear();
                *next = 0;
                offload::segment(&hdr, &mut raw[VNET_HDR_LEN..n], scratch, |seg| {
                    spans.push((arena.len(), seg.len()));
                    arena.extend_from_slice(seg);
                })?;
                tracing::trace!(
                    bytes = n,
                    segments = spans.len(),
                    gso = hdr.gso_type,
                    "TUN read"
                );
                p.pop(buf)
                    .unwrap_or(Err(io::Error::from(io::ErrorKind::WouldBlock)))
            }
            Framing::Raw => {
                // SAFETY: reading into a live, exclusively borrowed buffer of its own length.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                result(n)
            }
            Framing::Utun => {
                let mut af = [0u8; 4];
                let iov = [
                    libc::iovec {
                        iov_base: af.as_mut_ptr().cast(),
                        iov_len: 4,
                    },
                    libc::iovec {
                        iov_base: buf.as_mut_ptr().cast(),
                        iov_len: buf.len(),
                    },
                ];
                // SAFETY: both iovecs point at live, exclusively borrowed buffers.
                let n = result(unsafe { libc::readv(fd, iov.as_ptr(), 2) })?;
                if n < 4 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("utun read of {n} bytes has no address-family header"),
                    ));
                }
                Ok(n - 4)
            }
        }
    }

    fn write_once(&self, packet: &[u8]) -> io::Result<()> {
        let fd = self.fd.get_ref().as_raw_fd();
        let written = match self.framing {
            Framing::Vnet => {
                let hdr = [0u8; VNET_HDR_LEN];
                let iov = [
                    libc::iovec {
                        iov_base: hdr.as_ptr() as *mut _,
                        iov_len: VNET_HDR_LEN,
                    },
                    libc::iovec {
                        iov_base: packet.as_ptr() as *mut _,
                        iov_len: packet.len(),
                    },
                ];
                // SAFETY: both iovecs point at live buffers; writev only reads them.
                result(unsafe { libc::writev(fd, iov.as_ptr(), 2) })?.saturating_sub(VNET_HDR_LEN)
            }
            Framing::Raw => {
                // SAFETY: writing from a live buffer of its own length.
                result(unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) })?
            }
            Framing::Utun => {
                let af = utun_family(packet)?.to_be_bytes();
                let iov = [
                    libc::iovec {
                        iov_base: af.as_ptr() as *mut _,
                        iov_len: 4,
                    },
                    libc::iovec {
                        iov_base: packet.as_ptr() as *mut _,
                        iov_len: packet.len(),
                    },
                ];
                // SAFETY: both iovecs point at live buffers; writev only reads them.
                result(unsafe { libc::writev(fd, iov.as_ptr(), 2) })?.saturating_sub(4)
            }
        };
        if written != packet.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short packet write: {written} of {}", packet.len()),
            ));
        }
        Ok(())
    }
}

/// The utun address family for an IP packet, from its version nibble.
pub fn utun_family(packet: &[u8]) -> io::Result<u32> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => Ok(UTUN_AF_INET),
        Some(6) => Ok(UTUN_AF_INET6),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an IPv4 or IPv6 packet",
        )),
    }
}

fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own change only its status flags.
    unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Device for FdDevice {
    async fn recv<'a>(&'a self, buf: &'a mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|_| self.read_once(buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_once(buf)
    }

    fn try_send(&self, packet: &[u8]) -> io::Result<()> {
        if self.framing != Framing::Vnet {
            return self.write_once(packet);
        }
        self.coalesce(|c, mut write| c.push(packet, &mut write))
    }

    fn flush(&self) -> io::Result<()> {
        if self.framing != Framing::Vnet {
            return Ok(());
        }
        self.coalesce(|c, mut write| c.flush(&mut write))
    }
}

impl FdDevice {
    /// Runs `op` on the coalescer with a sink that writes each finished frame to the TUN;
    /// returns the last write error, if any.
    ///
    /// A kernel without UDP GSO on TUN writes (before Linux 6.2) refuses a UDP GSO frame
    /// with `EINVAL`: that frame is then cut here and written datagram by datagram, and
    /// UDP is no longer joined.
    fn coalesce(&self, op: impl FnOnce(&mut Coalescer, &mut dyn FnMut(&[u8]))) -> io::Result<()> {
        let fd = self.fd.get_ref().as_raw_fd();
        let mut result = Ok(());
        let mut udp_refused = false;
        let mut c = self
            .coalescer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        op(&mut c, &mut |frame| {
            let r = match write_frame(fd, frame) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && offload::is_udp_gso(frame) => {
                    udp_refused = true;
                    write_cut(fd, frame)
                }
                r => r,
            };
            if let Err(e) = r {
                result = Err(e);
            }
        });
        if udp_refused {
            tracing::debug!(
                "the kernel refused a UDP GSO frame on the TUN; UDP is no longer coalesced"
            );
            c.set_udp(false);
        }
        result
    }
}

/// Cuts a GSO frame into plain packets and writes each.
fn write_cut(fd: std::os::fd::RawFd, frame: &[u8]) -> io::Result<()> {
    let mut result = Ok(());
    offload::cut_frame(frame, |plain| {
        if let Err(e) = write_frame(fd, plain) {
            result = Err(e);
        }
    })?;
    result
}

/// Writes one complete frame (vnet header included).
fn write_frame(fd: std::os::fd::RawFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: writing from a live buffer of its own length.
    let n = result(unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) })?;
    if n != frame.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short TUN write: {n} of {}", frame.len()),
        ));
    }
    Ok(())
}

/// Duplicates `fd` (close-on-exec).
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only reads `fd`; an invalid fd yields -1/EBADF.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a descriptor we just created and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn socketpair() -> (OwnedFd, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        (OwnedFd::from(a), b)
    }

    const V4: &[u8] = &[
        0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];

    #[tokio::test]
    async fn utun_framing_adds_the_address_family_on_write() {
        let (fd, peer) = socketpair();
        let dev = FdDevice::new(fd, Framing::Utun).unwrap();
        dev.try_send(V4).unwrap();
        let mut v6 = vec![0x60u8; 40];
        v6[4] = 0;
        dev.try_send(&v6).unwrap();
        let mut got = [0u8; 128];
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..4], &[0, 0, 0, 2]);
        assert_eq!(&got[4..n], V4);
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..4], &[0, 0, 0, 30]);
        assert_eq!(n, 44);
    }

    #[tokio::test]
    async fn utun_framing_strips_the_address_family_on_read() {
        let (fd, peer) = socketpair();
        let dev = FdDevice::new(fd, Framing::Utun).unwrap();
        let mut framed = vec![0, 0, 0, 2];
        framed.extend_from_slice(V4);
        peer.send(&framed).unwrap();
        let mut buf = [0u8; 128];
        let n = dev.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], V4);
        assert_eq!(
            dev.try_recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[tokio::test]
    async fn utun_read_without_a_header_is_an_error() {
        let (fd, peer) = socketpair();
        let dev = FdDevice::new(fd, Framing::Utun).unwrap();
        peer.send(&[0, 0]).unwrap();
        let mut buf = [0u8; 128];
        assert_eq!(
            dev.recv(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[tokio::test]
    async fn utun_refuses_to_write_a_non_ip_packet() {
        let (fd, _peer) = socketpair();
        let dev = FdDevice::new(fd, Framing::Utun).unwrap();
        assert_eq!(
            dev.try_send(&[0x10, 1, 2]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[tokio::test]
    async fn raw_framing_passes_packets_unchanged() {
        let (fd, peer) = socketpair();
        let dev = FdDevice::new(fd, Framing::Raw).unwrap();
        dev.try_send(V4).unwrap();
        let mut got = [0u8; 128];
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..n], V4);
        peer.send(V4).unwrap();
        let n = dev.recv(&mut got).await.unwrap();
        assert_eq!(&got[..n], V4);
    }
}
