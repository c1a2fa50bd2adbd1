//! The UDP socket WireGuard datagrams travel on: one dual-stack socket with large buffers.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use socket2::{Domain, Protocol, Socket, Type};

use super::udp_batch::{canonical, mapped};
use tokio::net::UdpSocket;

/// Socket buffer size asked for (the kernel may cap it; as root we force it).
const SOCKET_BUFFER: usize = 8 << 20;

/// A dual-stack UDP socket: IPv4 peers are reached through v4-mapped addresses, and every
/// source address is reported in canonical form.
pub struct Udp {
    socket: UdpSocket,
    /// The same socket, for sends straight to the kernel: tokio's `try_send_to` reports
    /// `WouldBlock` until the reactor has seen the socket writable once.
    sender: std::net::UdpSocket,
}

impl Udp {
    /// Binds `[::]:port` (0 = any) with IPv4 enabled too.
    pub fn bind(port: u16) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_only_v6(false)?;
        socket.set_nonblocking(true)?;
        grow_buffers(&socket);
        let addr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
        socket
            .bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind UDP port {port}: {e}")))?;
        let std: std::net::UdpSocket = socket.into();
        Ok(Self {
            sender: std.try_clone()?,
            socket: UdpSocket::from_std(std)?,
        })
    }

    pub fn local_port(&self) -> io::Result<u16> {
        Ok(self.socket.local_addr()?.port())
    }

    /// The socket's descriptor, for batched sends ([`super::udp_batch::flush`]).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.sender.as_raw_fd()
    }

    /// Turns on receive coalescing; returns whether the kernel supports it.
    pub fn enable_gro(&self) -> bool {
        super::udp_batch::enable_gro(self.raw_fd())
    }

    /// Waits until a datagram may be readable.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// One coalesced receive: (bytes, source, segment size); `WouldBlock` when empty.
    pub fn try_recv_batch(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
        let fd = self.raw_fd();
        self.socket.try_io(tokio::io::Interest::READABLE, || {
            super::udp_batch::recv_gro(fd, buf)
        })
    }

    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, from) = self.socket.recv_from(buf).await?;
        Ok((n, canonical(from)))
    }

    pub fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, from) = self.socket.try_recv_from(buf)?;
        Ok((n, canonical(from)))
    }

    pub fn try_send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.sender.send_to(data, mapped(to))
    }
}

/// Asks for large socket buffers: past the system's limit where the OS lets root do that
/// (Linux `SO_*BUFFORCE`), else as large as allowed.
fn grow_buffers(socket: &Socket) {
    #[cfg(target_os = "linux")]
    let options = [
        (Some(libc::SO_RCVBUFFORCE), libc::SO_RCVBUF),
        (Some(libc::SO_SNDBUFFORCE), libc::SO_SNDBUF),
    ];
    #[cfg(not(target_os = "linux"))]
    let options = [(None, libc::SO_RCVBUF), (None, libc::SO_SNDBUF)];
    for (force, normal) in options {
        let size = SOCKET_BUFFER as libc::c_int;
        if force.is_none_or(|f| setsockopt_int(socket, f, size).is_err()) {
            let _ = setsockopt_int(socket, normal, size);
        }
    }
}

fn setsockopt_int(socket: &Socket, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads `value` (a live c_int) for its size; the fd is a socket.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ipv4_peers_are_reached_and_reported_in_canonical_form() {
        let a = Udp::bind(0).unwrap();
        let b = Udp::bind(0).unwrap();
        let to: SocketAddr = format!("127.0.0.1:{}", b.local_port().unwrap())
            .parse()
            .unwrap();
        a.try_send_to(b"ping", to).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(
            from,
            format!("127.0.0.1:{}", a.local_port().unwrap())
                .parse::<SocketAddr>()
                .unwrap()
        );
    }
}
