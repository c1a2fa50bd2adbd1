//! The runner STUNs from its WireGuard socket: a real STUN server on loopback sees requests
//! from the runner's port and its answer becomes the runner's report (our mapped endpoint
//! and the region's latency); a rebind keeps the port, starts a new round from the new
//! socket, and stray STUN answers are counted, not believed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use codervpn_engine::device::{FdDevice, Framing};
use codervpn_engine::net::netcheck::{NetcheckStats, StunServer};
use codervpn_engine::net::runner::{self, NetReport, WgCommand};
use codervpn_engine::net::stun;
use codervpn_engine::net::udp::Udp;
use codervpn_engine::net::wg::PeerSet;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// A STUN server answering every Tailscale binding request with its source address;
/// reports each request's source.
async fn stun_server() -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if let Ok(tx_id) = stun::parse_binding_request(&buf[..n]) {
                let _ = tx.send(from);
                let _ = sock
                    .send_to(&stun::binding_response(tx_id, from), from)
                    .await;
            }
        }
    });
    (addr, rx)
}

struct Running {
    port: u16,
    commands: mpsc::Sender<WgCommand>,
    report: watch::Receiver<NetReport>,
    _device_peer: UnixDatagram,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    async fn stun_from(&self, region: i64, addr: SocketAddr) {
        let servers = vec![StunServer { region, addr }];
        let cmd = WgCommand::SetStunServers(servers);
        self.commands.send(cmd).await.unwrap();
    }

    /// Polls the runner's STUN stats until `f` holds (2 s at most); the last value.
    async fn stun_stats_until(&self, f: impl Fn(&NetcheckStats) -> bool) -> NetcheckStats {
        let mut last = NetcheckStats::default();
        for _ in 0..100 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.commands.send(WgCommand::Stats(tx)).await.unwrap();
            last = rx.await.unwrap().stun;
            if f(&last) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last
    }
}

fn start() -> Running {
    let (ours, device_peer) = UnixDatagram::pair().unwrap();
    let device = FdDevice::new(OwnedFd::from(ours), Framing::Raw).unwrap();
    let udp = Udp::bind(0).unwrap();
    let port = udp.local_port().unwrap();
    let (commands, cmd_rx) = mpsc::channel(8);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (report_tx, report) = watch::channel(NetReport::default());
    tokio::spawn(runner::run(
        PeerSet::new([9; 32]),
        device,
        udp,
        cmd_rx,
        runner::RunOptions {
            report: Some(report_tx),
            ..Default::default()
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    Running {
        port,
        commands,
        report,
        _device_peer: device_peer,
        _stop: stop,
    }
}

async fn report_where(
    r: &mut watch::Receiver<NetReport>,
    f: impl Fn(&NetReport) -> bool,
) -> NetReport {
    tokio::time::timeout(Duration::from_secs(5), r.wait_for(|n| f(n)))
        .await
        .expect("the report within 5 s")
        .unwrap()
        .clone()
}

#[tokio::test]
async fn stun_answers_become_the_reported_endpoint_and_region_latency() {
    let (server, mut seen) = stun_server().await;
    let mut run = start();
    let first = report_where(&mut run.report, |n| n.port != 0).await;
    assert_eq!(first.port, run.port);
    assert!(first.stun.endpoints.is_empty());

    run.stun_from(999, server).await;
    let from = seen.recv().await.unwrap();
    assert_eq!(
        from.port(),
        run.port,
        "STUN goes out of the WireGuard socket"
    );
    let got = report_where(&mut run.report, |n| !n.stun.endpoints.is_empty()).await;
    let ours: SocketAddr = ([127, 0, 0, 1], run.port).into();
    assert_eq!(got.stun.endpoints, vec![ours]);
    assert_eq!(got.stun.latency.len(), 1);
    assert_eq!(got.stun.latency[0].0, 999);
    assert!(got.stun.latency[0].1 < Duration::from_secs(1));
}

#[tokio::test]
async fn rebind_keeps_the_port_and_stuns_again_from_the_new_socket() {
    let (server, mut seen) = stun_server().await;
    let mut run = start();
    run.stun_from(1, server).await;
    seen.recv().await.unwrap();
    report_where(&mut run.report, |n| !n.stun.endpoints.is_empty()).await;

    let before = socket_inode(run.port).expect("the runner's socket in /proc/net/udp6");
    run.commands.send(WgCommand::Rebind).await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("a new STUN round after the rebind")
        .unwrap();
    assert_eq!(again.port(), run.port, "the same port after rebinding");
    // The answer reaches the new socket: the runner counts it as a response.
    let responses = run.stun_stats_until(|s| s.responses >= 2).await.responses;
    assert!(
        responses >= 2,
        "the rebound socket got the answer ({responses})"
    );
    assert_eq!(run.report.borrow().port, run.port);
    let after = socket_inode(run.port).expect("a socket on the port after the rebind");
    assert_ne!(before, after, "a new socket, not the old one");
}

/// The inode of the IPv6 UDP socket bound to `port` (/proc/net/udp6).
fn socket_inode(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp6").ok()?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local_port = cols.get(1)?.rsplit(':').next()?;
        (u16::from_str_radix(local_port, 16).ok()? == port).then(|| cols.get(9)?.parse().ok())?
    })
}

#[tokio::test]
async fn stun_answers_nobody_asked_for_are_counted_and_not_believed() {
    let mut run = start();
    report_where(&mut run.report, |n| n.port != 0).await;
    let liar = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let fake: SocketAddr = "203.0.113.66:1".parse().unwrap();
    liar.send_to(
        &stun::binding_response([5; 12], fake),
        ("127.0.0.1", run.port),
    )
    .unwrap();
    let ignored = run.stun_stats_until(|s| s.ignored == 1).await.ignored;
    assert_eq!(ignored, 1);
    assert!(run.report.borrow().stun.endpoints.is_empty());
}
