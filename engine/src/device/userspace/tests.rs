//! The userspace device against a second smoltcp stack playing the far side of the tunnel,
//! packets passed through the `Device` trait (no WireGuard), driven by real tokio TCP
//! clients through the SOCKS5 server and a port forward.

use std::net::SocketAddr;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::net::packet_queues::PacketQueues;

const ME_V4: &str = "10.202.0.1/24";
const ME_V6: &str = "fd00::1/64";
const PEER_V4: &str = "10.202.0.2";
const PEER_V6: &str = "fd00::2";
/// The peer sends `FETCH_LEN` bytes of [`pattern`] on each connection, then closes.
const FETCH_PORT: u16 = 80;
const FETCH_LEN: usize = 1 << 20;
/// The peer echoes, and closes after echoing once the client has closed.
const ECHO_PORT: u16 = 7;
/// The peer counts what it receives until FIN, answers the count in ASCII, and closes.
const COUNT_PORT: u16 = 9;
/// Nothing listens here: the peer's stack answers a SYN with a reset.
const CLOSED_PORT: u16 = 81;
/// Listening sockets the peer keeps per port.
const BACKLOG: usize = 16;

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

// ---------------------------------------------------------------------------------------
// The far side: a smoltcp stack with three little services.

struct Service {
    handle: SocketHandle,
    port: u16,
    /// Bytes sent (fetch), or received (count), or held for echo.
    count: usize,
    held: Vec<u8>,
    answered: bool,
}

struct Peer {
    iface: Interface,
    sockets: SocketSet<'static>,
    queues: PacketQueues,
    services: Vec<Service>,
    epoch: tokio::time::Instant,
}

impl Peer {
    fn new() -> Self {
        let mut queues = PacketQueues::new(1420);
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut queues,
            smoltcp::time::Instant::from_micros(0),
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(
                IpAddress::from(PEER_V4.parse::<std::net::IpAddr>().unwrap()),
                24,
            ))
            .unwrap();
            a.push(IpCidr::new(
                IpAddress::from(PEER_V6.parse::<std::net::IpAddr>().unwrap()),
                64,
            ))
            .unwrap();
        });
        Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            queues,
            services: Vec::new(),
            epoch: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Keeps [`BACKLOG`] listening sockets per service port, and serves the connected ones.
    fn serve(&mut self) {
        for port in [FETCH_PORT, ECHO_PORT, COUNT_PORT] {
            // smoltcp has no accept backlog: a SYN finding no listening socket is reset.
            let listening = self
                .services
                .iter()
                .filter(|s| {
                    s.port == port
                        && self.sockets.get::<tcp::Socket>(s.handle).state() == tcp::State::Listen
                })
                .count();
            for _ in listening..BACKLOG {
                let mut s = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; 65_536]),
                    tcp::SocketBuffer::new(vec![0; 65_536]),
                );
                s.listen(port).unwrap();
                let handle = self.sockets.add(s);
                self.services.push(Service {
                    handle,
                    port,
                    count: 0,
                    held: Vec::new(),
                    answered: false,
                });
            }
        }
        self.services.retain_mut(|svc| {
            let s = self.sockets.get_mut::<tcp::Socket>(svc.handle);
            match svc.port {
                FETCH_PORT if s.may_send() => {
                    while svc.count < FETCH_LEN && s.can_send() {
                        let n = s
                            .send(|buf| {
                                let n = buf.len().min(FETCH_LEN - svc.count);
                                for (i, b) in buf[..n].iter_mut().enumerate() {
                                    *b = pattern(svc.count + i);
                                }
                                (n, n)
                            })
                            .unwrap();
                        svc.count += n;
                    }
                    if svc.count == FETCH_LEN {
                        s.close();
                    }
                }
                ECHO_PORT => {
                    while s.can_recv() {
                        s.recv(|d| {
                            svc.held.extend_from_slice(d);
                            (d.len(), ())
                        })
                        .unwrap();
                    }
                    if s.may_send() && !svc.held.is_empty() {
                        let n = s.send_slice(&svc.held).unwrap();
                        svc.held.drain(..n);
                    }
                    if svc.held.is_empty() && s.state() == tcp::State::CloseWait {
                        s.close();
                    }
                }
                COUNT_PORT => {
                    while s.can_recv() {
                        svc.count += s.recv(|d| (d.len(), d.len())).unwrap();
                    }
                    if s.state() == tcp::State::CloseWait && !svc.answered {
                        s.send_slice(svc.count.to_string().as_bytes()).unwrap();
                        s.close();
                        svc.answered = true;
                    }
                }
                _ => {}
            }
            let finished = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
                && svc.count > 0
                || (s.state() == tcp::State::Closed && svc.answered);
            if finished {
                self.sockets.remove(svc.handle);
            }
            !finished
        });
    }
}

/// Moves packets between the device and the peer's stack until the device stops.
async fn run_peer(device: UserspaceDevice, mut peer: Peer) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = peer.now();
        peer.iface.poll(now, &mut peer.queues, &mut peer.sockets);
        peer.serve();
        peer.iface.poll(now, &mut peer.queues, &mut peer.sockets);
        while let Some(p) = peer.queues.tx.pop_front() {
            match device.try_send(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    peer.queues.tx.push_front(p);
                    break;
                }
                Err(_) => return,
            }
        }
        let delay = peer
            .iface
            .poll_delay(now, &peer.sockets)
            .map(Duration::from)
            .unwrap_or(Duration::from_millis(5))
            .min(Duration::from_millis(5));
        tokio::select! {
            r = device.recv(&mut buf) => {
                let Ok(n) = r else { return };
                peer.queues.rx.push_back(buf[..n].to_vec());
                while let Ok(n) = device.try_recv(&mut buf) {
                    peer.queues.rx.push_back(buf[..n].to_vec());
                }
            }
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn config() -> UserspaceConfig {
    let mut cfg = UserspaceConfig::new(vec![ME_V4.parse().unwrap(), ME_V6.parse().unwrap()]);
    cfg.connect_timeout = Duration::from_millis(500);
    cfg
}

/// A stack wired to a peer, and a SOCKS5 server in front of it.
async fn setup(cfg: UserspaceConfig) -> (StackHandle, SocketAddr) {
    let (device, handle) = UserspaceDevice::new(cfg).unwrap();
    tokio::spawn(run_peer(device, Peer::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socks = listener.local_addr().unwrap();
    tokio::spawn(socks5::serve(
        listener,
        handle.clone(),
        super::socks5_access::Access::owner(),
    ));
    (handle, socks)
}

/// Runs the SOCKS5 handshake for `to`; returns the reply code and the stream.
async fn socks_connect(socks: SocketAddr, to: SocketAddr) -> (u8, TcpStream) {
    let mut s = TcpStream::connect(socks).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.unwrap();
    assert_eq!(m, [5, 0]);
    let mut req = vec![5, 1, 0];
    match to {
        SocketAddr::V4(a) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
        }
    }
    req.extend_from_slice(&to.port().to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[0], 5);
    (reply[1], s)
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::new(PEER_V4.parse().unwrap(), port)
}

async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    got
}

fn assert_fetched(got: &[u8]) {
    assert_eq!(got.len(), FETCH_LEN);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == pattern(i)),
        "payload differs"
    );
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn socks5_fetch_returns_the_peers_bytes() {
    let (_h, socks) = setup(config()).await;
    let (code, mut s) = socks_connect(socks, peer(FETCH_PORT)).await;
    assert_eq!(code, 0);
    assert_fetched(&read_to_end(&mut s).await);
}

#[tokio::test]
async fn socks5_reaches_an_ipv6_peer() {
    let (_h, socks) = setup(config()).await;
    let (code, mut s) =
        socks_connect(socks, SocketAddr::new(PEER_V6.parse().unwrap(), ECHO_PORT)).await;
    assert_eq!(code, 0);
    s.write_all(b"over ipv6").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, b"over ipv6");
}

#[tokio::test]
async fn client_half_close_reaches_the_peer_and_its_answer_still_arrives() {
    let (_h, socks) = setup(config()).await;
    let (code, mut s) = socks_connect(socks, peer(COUNT_PORT)).await;
    assert_eq!(code, 0);
    let upload: Vec<u8> = (0..300_000).map(pattern).collect();
    s.write_all(&upload).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, b"300000");
}

#[tokio::test]
async fn echo_moves_a_large_stream_both_ways_with_backpressure() {
    // The client writes everything before it reads anything: the bytes in flight exceed
    // every buffer on the way, so this passes only if each stage waits for the next.
    let (_h, socks) = setup(config()).await;
    let (code, s) = socks_connect(socks, peer(ECHO_PORT)).await;
    assert_eq!(code, 0);
    let (mut r, mut w) = s.into_split();
    let len = 4 << 20;
    let writer = tokio::spawn(async move {
        let data: Vec<u8> = (0..len).map(pattern).collect();
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), len);
    assert!(got.iter().enumerate().all(|(i, b)| *b == pattern(i)));
}

#[tokio::test]
async fn parallel_connections_each_get_their_own_bytes() {
    let (_h, socks) = setup(config()).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let (code, mut s) = socks_connect(socks, peer(FETCH_PORT)).await;
            assert_eq!(code, 0);
            read_to_end(&mut s).await
        }));
    }
    for t in tasks {
        assert_fetched(&t.await.unwrap());
    }
}

#[tokio::test]
async fn closed_port_is_answered_connection_refused() {
    let (_h, socks) = setup(config()).await;
    let (code, mut s) = socks_connect(socks, peer(CLOSED_PORT)).await;
    assert_eq!(code, socks5::Reply::ConnectionRefused as u8);
    assert!(read_to_end(&mut s).await.is_empty());
}

#[tokio::test]
async fn silent_address_times_out_as_host_unreachable() {
    let (_h, socks) = setup(config()).await;
    // Inside the tunnel's subnet, but nobody answers for it.
    let (code, _s) = socks_connect(socks, "10.202.0.3:80".parse().unwrap()).await;
    assert_eq!(code, socks5::Reply::HostUnreachable as u8);
}

#[tokio::test]
async fn address_no_peer_covers_is_network_unreachable() {
    let mut cfg = config();
    cfg.reachable = vec!["10.202.0.0/24".parse().unwrap()];
    let (_h, socks) = setup(cfg).await;
    let (code, _s) = socks_connect(socks, "192.0.2.1:80".parse().unwrap()).await;
    assert_eq!(code, socks5::Reply::NetworkUnreachable as u8);
    let (code, _s) = socks_connect(socks, peer(ECHO_PORT)).await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn ipv6_target_without_an_ipv6_address_is_network_unreachable() {
    let (_h, socks) = setup(UserspaceConfig::new(vec![ME_V4.parse().unwrap()])).await;
    let (code, _s) =
        socks_connect(socks, SocketAddr::new(PEER_V6.parse().unwrap(), ECHO_PORT)).await;
    assert_eq!(code, socks5::Reply::NetworkUnreachable as u8);
}

#[tokio::test]
async fn forward_proxies_each_connection_to_its_remote() {
    let (handle, _socks) = setup(config()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(forward::serve(listener, peer(FETCH_PORT), handle));
    for _ in 0..2 {
        let mut s = TcpStream::connect(local).await.unwrap();
        assert_fetched(&read_to_end(&mut s).await);
    }
}

#[tokio::test]
async fn forward_to_a_refused_port_closes_the_client() {
    let (handle, _socks) = setup(config()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(forward::serve(listener, peer(CLOSED_PORT), handle));
    let mut s = TcpStream::connect(local).await.unwrap();
    let mut got = Vec::new();
    // Closed, or reset: either way no bytes.
    let _ = s.read_to_end(&mut got).await;
    assert!(got.is_empty());
}

#[tokio::test]
async fn dropping_the_device_stops_the_stack() {
    let (device, handle) = UserspaceDevice::new(config()).unwrap();
    drop(device);
    assert_eq!(
        handle.connect(peer(ECHO_PORT)).await.unwrap_err(),
        ConnectError::StackStopped
    );
}

#[tokio::test]
async fn abandoned_connection_is_reset_and_its_slot_freed() {
    let mut cfg = config();
    cfg.max_connections = 1;
    let (handle, _socks) = setup(cfg).await;
    for _ in 0..3 {
        // Dropped unread mid-transfer: the stack must notice and free the only slot.
        let mut s = handle.connect(peer(FETCH_PORT)).await.unwrap();
        let mut first = [0u8; 1000];
        s.read_exact(&mut first).await.unwrap();
        drop(s);
        let mut retries = 0;
        loop {
            match handle.connect(peer(ECHO_PORT)).await {
                Ok(mut e) => {
                    e.write_all(b"x").await.unwrap();
                    e.shutdown().await.unwrap();
                    let mut got = Vec::new();
                    e.read_to_end(&mut got).await.unwrap();
                    assert_eq!(got, b"x");
                    break;
                }
                Err(ConnectError::TooManyConnections { max: 1 }) if retries < 200 => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[tokio::test]
async fn bad_configs_are_refused() {
    assert!(matches!(
        UserspaceDevice::new(UserspaceConfig::new(vec![])),
        Err(UserspaceError::NoAddress)
    ));
    let many = (1..=5)
        .map(|i| format!("10.0.0.{i}/32").parse().unwrap())
        .collect();
    assert!(matches!(
        UserspaceDevice::new(UserspaceConfig::new(many)),
        Err(UserspaceError::TooManyAddresses { count: 5 })
    ));
    assert!(matches!(
        UserspaceDevice::new(UserspaceConfig::new(vec!["224.0.0.1/32".parse().unwrap()])),
        Err(UserspaceError::NotUnicast { .. })
    ));
    let mut cfg = config();
    cfg.mtu = 1000;
    assert!(matches!(
        UserspaceDevice::new(cfg),
        Err(UserspaceError::MtuTooSmall { mtu: 1000 })
    ));
}

#[test]
fn packet_larger_than_the_read_buffer_is_dropped_not_fatal() {
    let mut small = [0u8; 10];
    assert_eq!(UserspaceDevice::take(&[1; 100], &mut small), None);
    assert_eq!(UserspaceDevice::take(&[1; 10], &mut small), Some(10));
}
