//! The userspace device: the tunnel without a TUN and without root. A smoltcp TCP/IP stack
//! holds the tunnel's own addresses; the WireGuard runner writes the packets it decrypts
//! into it ([`Device::try_send`]) and reads the packets it sends ([`Device::recv`]). Local
//! programs reach the tunnel through a SOCKS5 server ([`socks5`]) or TCP port forwards
//! ([`forward`]), each of whose connections becomes a smoltcp TCP connection. Services on
//! the tunnel's own addresses ([`services`]) take connections from a [`StackListener`]; the
//! stack itself answers pings (ICMP and ICMPv6 echo) to those addresses.
//!
//! ```text
//!  SOCKS5 / forward ─connect─▶ StackHandle ─Command─▶ stack task ◀─packets─▶ UserspaceDevice ◀─▶ runner
//!  services ◀─accept─ StackListener                  (Interface,                (bounded
//!      (host TCP)   ◀─ bytes: DuplexStream (bounded) ─▶ SocketSet)                queues)
//! ```
//!
//! One task owns the smoltcp `Interface`, its `SocketSet` and every connection; everything
//! else talks to it over bounded channels and bounded in-memory pipes, so a slow reader on
//! either side slows the sender down (TCP windows close) instead of growing a buffer.

mod phy;
mod stack;

pub mod forward;
#[cfg(any(test, feature = "test-servers"))]
pub mod services;
pub mod socks5;
pub mod socks5_access;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use ipnet::IpNet;
use smoltcp::iface::{Config, Interface};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::Device;
use stack::{Accepted, Command, Stack};

/// Packets queued each way between the runner and the stack.
const PACKET_QUEUE: usize = 256;
/// Connect requests queued for the stack.
const COMMAND_QUEUE: usize = 64;
/// Addresses the smoltcp interface can hold (its `iface-max-addr-count` feature).
pub const MAX_ADDRESSES: usize = 4;

/// How the userspace stack is set up.
#[derive(Debug, Clone)]
pub struct UserspaceConfig {
    /// The tunnel's own addresses (wg-quick `Address`), IPv4 and/or IPv6.
    pub addresses: Vec<IpNet>,
    /// Destinations routed through the tunnel (the peers' allowed IPs). Connections to
    /// anything else fail at once as unreachable. Empty: no such check.
    pub reachable: Vec<IpNet>,
    /// Largest IP packet the stack sends.
    pub mtu: usize,
    /// How long a TCP connect may take before it fails as timed out.
    pub connect_timeout: Duration,
    /// Connections open at once (each holds two `socket_buffer`s).
    pub max_connections: usize,
    /// Size of each TCP socket's receive and send buffers.
    pub socket_buffer: usize,
}

impl UserspaceConfig {
    /// Defaults: MTU 1420, 15 s connect timeout, 512 connections of 2 × 256 KiB.
    pub fn new(addresses: Vec<IpNet>) -> Self {
        Self {
            addresses,
            reachable: Vec::new(),
            mtu: 1420,
            connect_timeout: Duration::from_secs(15),
            max_connections: 512,
            socket_buffer: 256 * 1024,
        }
    }
}

/// Why the userspace stack could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UserspaceError {
    #[error("the userspace stack needs at least one tunnel address (an Address line)")]
    NoAddress,
    #[error("the userspace stack holds at most {MAX_ADDRESSES} addresses; the config has {count}")]
    TooManyAddresses { count: usize },
    #[error("{addr} cannot be the tunnel's own address: it is not a unicast address")]
    NotUnicast { addr: IpNet },
    #[error("MTU {mtu} is too small for IPv6 (at least 1280) or IPv4 (at least 576)")]
    MtuTooSmall { mtu: usize },
}

/// Why a connection through the tunnel could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("connection to {to} refused (reset by the peer)")]
    Refused { to: SocketAddr },
    #[error("connection to {to} timed out: no answer through the tunnel")]
    TimedOut { to: SocketAddr },
    #[error("{to} is unreachable through the tunnel: {why}")]
    Unreachable { to: SocketAddr, why: &'static str },
    #[error("too many connections through the tunnel (at most {max})")]
    TooManyConnections { max: usize },
    #[error("the userspace stack has stopped")]
    StackStopped,
}

/// Why a port could not be listened on, or a listener stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on port 0 through the tunnel: name a port")]
    PortZero,
    #[error("port {port} already has a listener in the userspace stack")]
    PortInUse { port: u16 },
    #[error("the userspace stack has stopped")]
    StackStopped,
}

/// Opens TCP connections to addresses reached through the tunnel. The SOCKS5 server and
/// the port forwards take any implementation (tests use fakes).
pub trait TcpConnector: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn connect(
        &self,
        to: SocketAddr,
    ) -> impl Future<Output = Result<Self::Stream, ConnectError>> + Send;

    /// The address a host name stands for, when this connector can resolve names (the
    /// tunnel's own zone: workspace names). `None`: IP literals only.
    fn resolve(&self, name: &str) -> Option<IpAddr> {
        let _ = name;
        None
    }
}

/// The packet side of the userspace stack, for the WireGuard runner.
pub struct UserspaceDevice {
    to_stack: mpsc::Sender<Vec<u8>>,
    /// Emptied buffers back to the stack, for the packets it sends next.
    spares_to_stack: mpsc::Sender<Vec<u8>>,
    /// Only the runner's task uses it: the lock is never contended, it only lends `&self`
    /// methods the `&mut` channel receivers need.
    rx: Mutex<DeviceRx>,
}

struct DeviceRx {
    from_stack: mpsc::Receiver<Vec<u8>>,
    /// Buffers smoltcp has consumed, for the packets the runner writes next.
    spares: mpsc::Receiver<Vec<u8>>,
}

/// Opens connections through the stack; cheap to clone. Connections outlive neither the
/// stack nor the [`UserspaceDevice`] (the stack stops when the device is dropped).
#[derive(Clone)]
pub struct StackHandle {
    commands: mpsc::Sender<Command>,
}

/// Connections to one port of the tunnel's own addresses (any of them, IPv4 or IPv6), as
/// many at once as `max_connections` allows. Dropping it stops listening; connections
/// already accepted go on.
pub struct StackListener {
    port: u16,
    accepted: mpsc::Receiver<Accepted>,
    /// Tells the stack when this listener is dropped.
    commands: mpsc::Sender<Command>,
}

impl UserspaceDevice {
    /// Builds the stack and spawns the task that owns it. Must be called inside a tokio
    /// runtime. The task ends when the returned device is dropped.
    pub fn new(cfg: UserspaceConfig) -> Result<(Self, StackHandle), UserspaceError> {
        check(&cfg)?;
        let (to_stack, from_tunnel) = mpsc::channel(PACKET_QUEUE);
        let (to_tunnel, from_stack) = mpsc::channel(PACKET_QUEUE);
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (spares_out, spares_for_device) = mpsc::channel(PACKET_QUEUE);
        let (spares_to_stack, spares_in) = mpsc::channel(PACKET_QUEUE);
        let mut phy = phy::Phy {
            from_tunnel,
            pending: None,
            spares_out,
            to_tunnel,
            spares_in,
            blocked: false,
            mtu: cfg.mtu,
        };
        let epoch = tokio::time::Instant::now();
        let seed = random_seed();
        let mut iface_cfg = Config::new(HardwareAddress::Ip);
        iface_cfg.random_seed = seed;
        let mut iface = Interface::new(iface_cfg, &mut phy, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            for net in &cfg.addresses {
                // `check` bounded the count by the vector's capacity.
                let _ = addrs.push(IpCidr::new(IpAddress::from(net.addr()), net.prefix_len()));
            }
        });
        // A default route through our own address: with an IP-only medium there is no next
        // hop to resolve, so this lets the stack open connections to any address the
        // peers' allowed IPs cover, inside the tunnel's subnets or not.
        for net in &cfg.addresses {
            let routed = match net.addr() {
                IpAddr::V4(a) if iface.routes().get_default_ipv4_route().is_none() => {
                    iface.routes_mut().add_default_ipv4_route(a).is_ok()
                }
                IpAddr::V6(a) if iface.routes().get_default_ipv6_route().is_none() => {
                    iface.routes_mut().add_default_ipv6_route(a).is_ok()
                }
                IpAddr::V4(_) | IpAddr::V6(_) => true,
            };
            debug_assert!(routed, "two default routes fit the route table");
        }
        debug!(addresses = ?cfg.addresses, mtu = cfg.mtu, "userspace stack up");
        let stack = Stack::new(iface, phy, commands, cfg, epoch, seed);
        tokio::spawn(stack.run());
        let device = Self {
            to_stack,
            spares_to_stack,
            rx: Mutex::new(DeviceRx {
                from_stack,
                spares: spares_for_device,
            }),
        };
        Ok((
            device,
            StackHandle {
                commands: commands_tx,
            },
        ))
    }

    fn rx(&self) -> std::sync::MutexGuard<'_, DeviceRx> {
        self.rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Copies `packet` out and recycles its buffer.
    fn deliver(&self, packet: Vec<u8>, buf: &mut [u8]) -> Option<usize> {
        let n = Self::take(&packet, buf);
        // If the stack has spares enough, this one is simply freed.
        let _ = self.spares_to_stack.try_send(packet);
        n
    }

    /// Copies `packet` into `buf`; `None` (the packet dropped, with a warning) if it does
    /// not fit — a caller bug, since the stack sends nothing larger than the MTU, and not
    /// one worth stopping the tunnel for.
    fn take(packet: &[u8], buf: &mut [u8]) -> Option<usize> {
        let Some(dst) = buf.get_mut(..packet.len()) else {
            warn!(
                len = packet.len(),
                buf = buf.len(),
                "dropping a packet larger than the read buffer"
            );
            return None;
        };
        dst.copy_from_slice(packet);
        Some(packet.len())
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the userspace stack has stopped")
}

impl Device for UserspaceDevice {
    async fn recv<'a>(&'a self, buf: &'a mut [u8]) -> io::Result<usize> {
        loop {
            let packet = std::future::poll_fn(|cx| self.rx().from_stack.poll_recv(cx)).await;
            let Some(packet) = packet else {
                return Err(stopped());
            };
            if let Some(n) = self.deliver(packet, buf) {
                return Ok(n);
            }
        }
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let packet = match self.rx().from_stack.try_recv() {
                Ok(packet) => packet,
                Err(mpsc::error::TryRecvError::Empty) => {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(stopped()),
            };
            if let Some(n) = self.deliver(packet, buf) {
                return Ok(n);
            }
        }
    }

    fn try_send(&self, packet: &[u8]) -> io::Result<()> {
        let mut owned = self.rx().spares.try_recv().unwrap_or_default();
        owned.clear();
        owned.extend_from_slice(packet);
        match self.to_stack.try_send(owned) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(io::ErrorKind::WouldBlock.into()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(stopped()),
        }
    }
}

impl StackHandle {
    /// Opens a TCP connection to `to` through the tunnel; the stream carries its bytes.
    /// Shutting down the stream's write half sends a FIN; dropping it closes (or, if the
    /// peer still sends, resets) the connection.
    pub async fn connect(&self, to: SocketAddr) -> Result<DuplexStream, ConnectError> {
        self.ask(|reply| Command::Connect { to, reply })
            .await
            .ok_or(ConnectError::StackStopped)?
    }

    /// Listens on TCP `port` of the tunnel's own addresses. Each accepted connection is a
    /// stream like [`StackHandle::connect`]'s: shutting down its write half sends a FIN, a
    /// reset by the peer ends it.
    pub async fn listen(&self, port: u16) -> Result<StackListener, ListenError> {
        let accepted = self
            .ask(|reply| Command::Listen { port, reply })
            .await
            .ok_or(ListenError::StackStopped)??;
        Ok(StackListener {
            port,
            accepted,
            commands: self.commands.clone(),
        })
    }

    /// Sends the stack the command `make` builds around a reply channel, and waits for the
    /// reply. `None` if the stack has stopped.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.ok()?;
        answer.await.ok()
    }
}

impl StackListener {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next connection, with the peer's address, once its handshake is complete.
    pub async fn accept(&mut self) -> Result<(DuplexStream, SocketAddr), ListenError> {
        self.accepted.recv().await.ok_or(ListenError::StackStopped)
    }
}

impl Drop for StackListener {
    fn drop(&mut self) {
        // Wakes the stack to close the listening sockets now; if the queue is full, it
        // notices the listener is gone on its next pass anyway.
        self.accepted.close();
        let _ = self
            .commands
            .try_send(Command::Unlisten { port: self.port });
    }
}

impl TcpConnector for StackHandle {
    type Stream = DuplexStream;

    fn connect(
        &self,
        to: SocketAddr,
    ) -> impl Future<Output = Result<DuplexStream, ConnectError>> + Send {
        StackHandle::connect(self, to)
    }
}

/// The next client on `listener`. Accept errors (out of descriptors, a client gone before
/// it was accepted) are logged and retried after a pause, never fatal.
async fn accept_next(listener: &TcpListener, what: &'static str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                return (stream, from);
            }
            Err(e) => {
                warn!(error = %e, "{what} listener: accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn check(cfg: &UserspaceConfig) -> Result<(), UserspaceError> {
    if cfg.addresses.is_empty() {
        return Err(UserspaceError::NoAddress);
    }
    if cfg.addresses.len() > MAX_ADDRESSES {
        return Err(UserspaceError::TooManyAddresses {
            count: cfg.addresses.len(),
        });
    }
    for net in &cfg.addresses {
        let ip = net.addr();
        if ip.is_unspecified()
            || ip.is_multicast()
            || ip.is_loopback()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
        {
            return Err(UserspaceError::NotUnicast { addr: *net });
        }
    }
    let min = if cfg.addresses.iter().any(|n| n.addr().is_ipv6()) {
        1280
    } else {
        576
    };
    if cfg.mtu < min {
        return Err(UserspaceError::MtuTooSmall { mtu: cfg.mtu });
    }
    Ok(())
}

/// A seed for smoltcp's initial sequence numbers and our first ephemeral port: it need not
/// be cryptographic, only different on each start.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod listen_tests;
#[cfg(test)]
mod tests;
