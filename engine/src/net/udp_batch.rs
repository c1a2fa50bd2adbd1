//! Batched UDP I/O: on Linux, segmentation offload on send (`UDP_SEGMENT`: one `sendmsg`
//! carries up to 64 equal-size datagrams to one destination) and receive coalescing
//! (`UDP_GRO`: one `recvmsg` returns several datagrams from one source, back to back).
//! Falls back to one datagram per call where the kernel refuses, and on other systems
//! (Apple platforms: one `sendto` / `recvmsg` per datagram, issue #15).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;

/// Most datagrams one GSO send may carry.
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes one GSO send may carry (a UDP payload limit).
const MAX_GSO_BYTES: usize = 65_000;

/// Datagrams waiting to go out to one destination, all `seg` bytes but the last.
pub struct SendBatch {
    buf: Vec<u8>,
    seg: usize,
    count: usize,
    to: Option<SocketAddr>,
    /// The last datagram was shorter than `seg`: nothing may follow it in this batch.
    closed: bool,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            buf: Vec::with_capacity(MAX_GSO_BYTES + 2048),
            seg: 0,
            count: 0,
            to: None,
            closed: false,
        }
    }
}

impl SendBatch {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether `data` for `to` can join this batch.
    pub fn fits(&self, data: &[u8], to: SocketAddr) -> bool {
        self.count == 0
            || (self.to == Some(to)
                && !self.closed
                && data.len() <= self.seg
                && self.count < MAX_SEGMENTS
                && self.buf.len() + data.len() <= MAX_GSO_BYTES)
    }

    /// Appends; the caller checked [`SendBatch::fits`].
    pub fn push(&mut self, data: &[u8], to: SocketAddr) {
        if self.count == 0 {
            self.seg = data.len();
            self.to = Some(to);
            self.closed = false;
        } else if data.len() < self.seg {
            self.closed = true;
        }
        self.buf.extend_from_slice(data);
        self.count += 1;
    }

    /// The destination, once a datagram is in.
    pub fn to(&self) -> Option<SocketAddr> {
        self.to
    }

    /// The datagrams, in order.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.buf.chunks(self.seg.max(1)).take(self.count)
    }

    /// Empties the batch (what [`flush`] does after sending).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.to = None;
        self.closed = false;
    }
}

/// Sends the batch (one `sendmsg` with `UDP_SEGMENT` when it holds several datagrams and
/// `gso` is on; else one `sendto` per datagram), then empties it. Returns the datagrams
/// that could not be sent. Turns `gso` off if the kernel rejects segmentation.
pub fn flush(fd: RawFd, batch: &mut SendBatch, gso: &mut bool) -> usize {
    let Some(to) = batch.to else {
        return 0;
    };
    let to = sockaddr(to);
    let mut failed = 0;
    if batch.count > 1 && *gso && cfg!(target_os = "linux") {
        match send_gso(fd, &batch.buf, batch.seg, &to) {
            Ok(()) => {
                batch.clear();
                return 0;
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
                ) =>
            {
                tracing::info!(error = %e, "UDP segmentation offload unavailable; sending datagrams one by one");
                *gso = false;
            }
            Err(_) => {
                failed = batch.count;
                batch.clear();
                return failed;
            }
        }
    }
    for chunk in batch.buf.chunks(batch.seg.max(1)) {
        if send_to(fd, chunk, &to).is_err() {
            failed += 1;
        }
    }
    batch.clear();
    failed
}

fn send_to(fd: RawFd, data: &[u8], to: &libc::sockaddr_in6) -> io::Result<()> {
    // SAFETY: `data` and `to` are live for the call; the length arguments match them.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            0,
            (to as *const libc::sockaddr_in6).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
fn send_gso(_: RawFd, _: &[u8], _: usize, _: &libc::sockaddr_in6) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOPROTOOPT))
}

#[cfg(target_os = "linux")]
fn send_gso(fd: RawFd, data: &[u8], seg: usize, to: &libc::sockaddr_in6) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // Room for one cmsg carrying a u16.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; every pointer set below stays live for the sendmsg.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (to as *const libc::sockaddr_in6) as *mut _;
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
    // SAFETY: the control buffer is large enough for one u16 cmsg (checked by
    // CMSG_SPACE above, 32 bytes available); CMSG_FIRSTHDR/CMSG_DATA point inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg as u16);
    }
    // SAFETY: `msg` describes live buffers.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Asks the kernel to coalesce received datagrams (`UDP_GRO`). Returns whether it agreed
/// (never, off Linux).
#[cfg(not(target_os = "linux"))]
pub fn enable_gro(_: RawFd) -> bool {
    false
}

/// Asks the kernel to coalesce received datagrams (`UDP_GRO`). Returns whether it agreed.
#[cfg(target_os = "linux")]
pub fn enable_gro(fd: RawFd) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one live c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// One `recvmsg`: returns (bytes, source, segment size). With GRO the buffer may hold
/// several datagrams of `segment` bytes each (the last may be shorter).
pub fn recv_gro(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: plain data.
    let mut from: libc::sockaddr_in6 = unsafe { zeroed() };
    let mut control = [0u64; 8];
    // SAFETY: plain data; the pointers set below stay live for the recvmsg.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>() as _;
    // SAFETY: `msg` describes live, writable buffers.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let mut segment = n;
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if is_gro_segment(&*cmsg) {
                segment =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) as usize;
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let addr = SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::from(from.sin6_addr.s6_addr),
        u16::from_be(from.sin6_port),
        from.sin6_flowinfo,
        from.sin6_scope_id,
    ));
    Ok((n, canonical(addr), segment.max(1)))
}

/// Whether a received control message gives the GRO segment size.
#[cfg(target_os = "linux")]
fn is_gro_segment(cmsg: &libc::cmsghdr) -> bool {
    cmsg.cmsg_level == libc::SOL_UDP && cmsg.cmsg_type == libc::UDP_GRO
}

#[cfg(not(target_os = "linux"))]
fn is_gro_segment(_: &libc::cmsghdr) -> bool {
    false
}

/// IPv4-mapped IPv6 addresses as plain IPv4 (what a dual-stack socket reports).
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// An IPv4 address as its v4-mapped IPv6 form (what a dual-stack socket sends to).
pub(crate) fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        SocketAddr::V6(_) => addr,
    }
}

/// A v4 destination becomes v4-mapped (the socket is dual-stack IPv6).
fn sockaddr(addr: SocketAddr) -> libc::sockaddr_in6 {
    let v6 = match mapped(addr) {
        SocketAddr::V6(v6) => v6,
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
    };
    // SAFETY: plain data.
    let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = v6.port().to_be();
    sa.sin6_addr.s6_addr = v6.ip().octets();
    sa.sin6_flowinfo = v6.flowinfo();
    sa.sin6_scope_id = v6.scope_id();
    sa
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::udp::Udp;

    /// Receives until `want` datagrams arrived; returns them and whether any receive
    /// carried several (GRO).
    async fn receive(udp: &Udp, want: usize) -> (Vec<Vec<u8>>, bool) {
        let mut buf = vec![0u8; 65_536];
        let (mut got, mut coalesced) = (Vec::new(), false);
        for _ in 0..2000 {
            match recv_gro(udp.raw_fd(), &mut buf) {
                Ok((n, _, segment)) => {
                    coalesced |= n > segment;
                    got.extend(buf[..n].chunks(segment).map(<[u8]>::to_vec));
                    if got.len() >= want {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err(e) => panic!("receive: {e}"),
            }
        }
        (got, coalesced)
    }

    /// Eight 1000-byte datagrams and a 500-byte tail, each filled with its index.
    fn batch_to(to: SocketAddr) -> (SendBatch, Vec<Vec<u8>>) {
        let mut batch = SendBatch::default();
        let mut sent = Vec::new();
        for i in 0..9u8 {
            let d = vec![i; if i == 8 { 500 } else { 1000 }];
            assert!(batch.fits(&d, to));
            batch.push(&d, to);
            sent.push(d);
        }
        (batch, sent)
    }

    #[tokio::test]
    async fn a_gso_batch_arrives_whole_and_in_order_and_gro_coalesces_it() {
        let (tx, rx) = (Udp::bind(0).unwrap(), Udp::bind(0).unwrap());
        assert!(rx.enable_gro(), "the kernel refused UDP_GRO");
        let to: SocketAddr = format!("127.0.0.1:{}", rx.local_port().unwrap())
            .parse()
            .unwrap();
        let (mut batch, sent) = batch_to(to);
        let mut gso = true;
        assert_eq!(flush(tx.raw_fd(), &mut batch, &mut gso), 0);
        assert!(gso, "the kernel refused UDP_SEGMENT on loopback");
        assert!(batch.is_empty());
        let (got, coalesced) = receive(&rx, sent.len()).await;
        assert_eq!(got, sent);
        assert!(coalesced, "one receive carried several datagrams");
    }

    #[tokio::test]
    async fn without_gso_the_datagrams_go_one_by_one() {
        let (tx, rx) = (Udp::bind(0).unwrap(), Udp::bind(0).unwrap());
        let to: SocketAddr = format!("[::1]:{}", rx.local_port().unwrap())
            .parse()
            .unwrap();
        let (mut batch, sent) = batch_to(to);
        let mut gso = false;
        assert_eq!(flush(tx.raw_fd(), &mut batch, &mut gso), 0);
        let (got, coalesced) = receive(&rx, sent.len()).await;
        assert_eq!(got, sent);
        assert!(!coalesced, "no GRO asked for");
    }

    #[test]
    fn a_batch_takes_one_destination_equal_sizes_and_one_shorter_tail() {
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1".parse().unwrap();
        let mut batch = SendBatch::default();
        batch.push(&[0; 100], a);
        assert!(!batch.fits(&[0; 100], b), "another destination");
        assert!(!batch.fits(&[0; 101], a), "longer than the segment");
        assert!(batch.fits(&[0; 50], a));
        batch.push(&[0; 50], a);
        assert!(!batch.fits(&[0; 50], a), "nothing after a shorter tail");
        assert_eq!(
            batch.datagrams().map(<[u8]>::len).collect::<Vec<_>>(),
            [100, 50]
        );
    }
}
