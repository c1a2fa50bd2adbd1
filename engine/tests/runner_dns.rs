//! The WireGuard runner answers DNS for workspace names itself: a query from the device to
//! `[fd60:627a:a42b::53]:53`, over UDP or TCP, comes back from the device, and never goes to
//! a peer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv6Addr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use codervpn_dns::tcp::{TcpDecoder, encode_tcp};
use codervpn_dns::{AgentInfo, CODER_DNS_ADDR, SharedZone, Zone, ZoneConfig};
use codervpn_engine::device::{FdDevice, Framing};
use codervpn_engine::net::packet_queues::PacketQueues;
use codervpn_engine::net::runner::{self, WgCommand};
use codervpn_engine::net::udp::Udp;
use codervpn_engine::net::wg::PeerSet;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

/// A DNS query message (type AAAA) for `name`.
fn query_message(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 28, 0, 1]);
    q
}

/// An IPv6/UDP packet from `[fd60:627a:a42b::1]:40000` carrying a query for `name`.
fn query_packet(name: &str) -> Vec<u8> {
    let q = query_message(0xabcd, name);
    let udp_len = 8 + q.len();
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&"fd60:627a:a42b::1".parse::<Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&CODER_DNS_ADDR.octets());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&53u16.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&q);
    p
}

/// A runner answering DNS from a zone with one agent (`main.dev.testy.coder.` →
/// `fd60:627a:a42b:101::`), on a device whose far end is returned.
struct Running {
    device_peer: UnixDatagram,
    commands: tokio::sync::mpsc::Sender<WgCommand>,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn start_runner() -> Running {
    let (ours, device_peer) = UnixDatagram::pair().unwrap();
    device_peer
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let device = FdDevice::new(OwnedFd::from(ours), Framing::Raw).unwrap();
    let mut id = [0u8; 16];
    id[6] = 1;
    id[7] = 1;
    let zone = Zone::new(
        ZoneConfig::default(),
        &[AgentInfo {
            id,
            name: "main".into(),
            workspace: "dev".into(),
            owner: "testy".into(),
        }],
    );
    let (commands, cmd_rx) = tokio::sync::mpsc::channel(4);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(runner::run(
        PeerSet::new([9; 32]),
        device,
        Udp::bind(0).unwrap(),
        cmd_rx,
        runner::RunOptions {
            dns: Some(Arc::new(SharedZone::new(zone))),
            relay: None,
            ..Default::default()
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    Running {
        device_peer,
        commands,
        stop,
        run,
    }
}

impl Running {
    /// Asserts nothing was routed to a peer, and stops the runner.
    async fn stop(self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(WgCommand::Stats(tx)).await.unwrap();
        let stats = rx.await.unwrap();
        assert_eq!(
            stats.dropped.no_route, 0,
            "the queries were not routed to a peer"
        );
        self.stop.send(()).unwrap();
        self.run.await.unwrap().unwrap();
    }
}

fn agent_addr() -> [u8; 16] {
    "fd60:627a:a42b:101::".parse::<Ipv6Addr>().unwrap().octets()
}

#[tokio::test]
async fn dns_queries_from_the_device_are_answered_by_the_runner() {
    let running = start_runner();
    let peer = running.device_peer.try_clone().unwrap();
    let reply = tokio::task::spawn_blocking(move || {
        peer.send(&query_packet("main.dev.testy.coder.")).unwrap();
        let mut buf = vec![0u8; 2048];
        let n = peer.recv(&mut buf).unwrap();
        buf.truncate(n);
        buf
    })
    .await
    .unwrap();
    assert_eq!(&reply[8..24], &CODER_DNS_ADDR.octets());
    assert_eq!(&reply[48..50], &[0xab, 0xcd], "the query's id");
    assert!(
        reply.windows(16).any(|w| w == agent_addr()),
        "the agent's address is in the answer"
    );
    running.stop().await;
}

#[tokio::test]
async fn pipelined_tcp_queries_from_the_device_are_answered_by_the_runner() {
    let running = start_runner();
    let peer = running.device_peer.try_clone().unwrap();
    let known = query_message(1, "Main.Dev.Testy.Coder.");
    let unknown = query_message(2, "nobody.coder.");
    let mut request = Vec::new();
    for q in [&known, &unknown] {
        encode_tcp(q, &mut request).unwrap();
    }

    let answers = tokio::task::spawn_blocking(move || tcp_exchange(&peer, &request, 2))
        .await
        .unwrap();

    assert_eq!(answers.len(), 2);
    assert_eq!(&answers[0][..2], &[0, 1], "answered in order");
    assert_eq!(answers[0][3] & 0x0f, 0, "NOERROR");
    assert_eq!(
        &answers[0][12..known.len()],
        &known[12..],
        "the question is echoed as asked, mixed case kept"
    );
    assert!(answers[0].windows(16).any(|w| w == agent_addr()));
    assert_eq!(&answers[1][..2], &[0, 2]);
    assert_eq!(answers[1][3] & 0x0f, 3, "NXDOMAIN");
    running.stop().await;
}

// ---------------------------------------------------------------------------------------
// A TCP client: a smoltcp stack at fd60:627a:a42b::1 whose packets cross the device.

/// Connects to `[fd60:627a:a42b::53]:53` over the device, sends `request`, and returns the
/// first `want` framed answers.
fn tcp_exchange(device: &UnixDatagram, request: &[u8], want: usize) -> Vec<Vec<u8>> {
    device
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let epoch = std::time::Instant::now();
    let now = || SmolInstant::from_micros(epoch.elapsed().as_micros() as i64);
    let mut wire = PacketQueues::default();
    let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut wire, now());
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(
            IpAddress::Ipv6("fd60:627a:a42b::1".parse().unwrap()),
            64,
        ))
        .unwrap();
    });
    let mut sockets = SocketSet::new(Vec::new());
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 16_384]),
        tcp::SocketBuffer::new(vec![0; 16_384]),
    );
    socket
        .connect(
            iface.context(),
            (IpAddress::Ipv6(CODER_DNS_ADDR), 53),
            40000,
        )
        .unwrap();
    let handle = sockets.add(socket);
    let mut sent = false;
    let mut decoder = TcpDecoder::new();
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 2048];
    while answers.len() < want {
        assert!(
            epoch.elapsed() < Duration::from_secs(10),
            "no answer in 10 s"
        );
        iface.poll(now(), &mut wire, &mut sockets);
        for p in wire.tx.drain(..) {
            device.send(&p).unwrap();
        }
        if let Ok(n) = device.recv(&mut buf) {
            wire.rx.push_back(buf[..n].to_vec());
        }
        let s = sockets.get_mut::<tcp::Socket>(handle);
        if !sent && s.may_send() {
            assert_eq!(s.send_slice(request).unwrap(), request.len());
            sent = true;
        }
        while s.can_recv() {
            s.recv(|d| {
                decoder.push(d);
                (d.len(), ())
            })
            .unwrap();
        }
        while let Some(m) = decoder.next_message() {
            answers.push(m.to_vec());
        }
    }
    answers
}
