//! The WireGuard runner keeps disco and STUN packets away from WireGuard: they are counted as
//! such (`WgStats::not_wireguard`), not as WireGuard garbage; with a disco key it answers
//! disco pings from known peers and counts the rest (`WgStats::disco_dropped`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use codervpn_engine::device::{FdDevice, Framing};
use codervpn_engine::net::disco::{self, CallMeMaybe, DiscoPrivateKey, Message, Ping};
use codervpn_engine::net::runner::{self, NotWireGuard, WgCommand};
use codervpn_engine::net::stun;
use codervpn_engine::net::udp::Udp;
use codervpn_engine::net::wg::{PeerConfig, PeerSet};

#[tokio::test]
async fn disco_and_stun_datagrams_are_counted_and_not_fed_to_wireguard() {
    let (ours, _device_peer) = UnixDatagram::pair().unwrap();
    let device = FdDevice::new(OwnedFd::from(ours), Framing::Raw).unwrap();
    let udp = Udp::bind(0).unwrap();
    let port = udp.local_port().unwrap();
    let (commands, cmd_rx) = tokio::sync::mpsc::channel(4);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(runner::run(
        PeerSet::new([9; 32]),
        device,
        udp,
        cmd_rx,
        runner::RunOptions::default(),
        async {
            let _ = stop_rx.await;
        },
    ));

    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = ("127.0.0.1", port);
    let a = DiscoPrivateKey::from_bytes([1; 32]);
    let b = DiscoPrivateKey::from_bytes([2; 32]);
    let cmm = Message::CallMeMaybe(CallMeMaybe::default());
    sender
        .send_to(&disco::seal(&a, &b.public_key(), &cmm), to)
        .unwrap();
    let addr = "192.0.2.1:41641".parse().unwrap();
    sender
        .send_to(&stun::binding_response([3; 12], addr), to)
        .unwrap();
    sender.send_to(b"neither", to).unwrap();

    let mut stats = None;
    for _ in 0..100 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        commands.send(WgCommand::Stats(tx)).await.unwrap();
        let s = rx.await.unwrap();
        if s.not_wireguard.disco + s.not_wireguard.stun + s.dropped.garbage == 3 {
            stats = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = stats.expect("all three datagrams were read within 2 s");
    assert_eq!(stats.not_wireguard, NotWireGuard { disco: 1, stun: 1 });
    assert_eq!(stats.dropped.garbage, 1);
    assert_eq!(
        stats.disco_dropped.unknown_sender, 1,
        "without a disco key every disco packet is dropped"
    );

    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

/// With a disco key, a ping from a peer's disco key is answered with a pong over UDP, and a
/// packet under that key that does not open is counted and not answered.
#[tokio::test]
async fn disco_ping_from_a_known_peer_is_answered_and_a_forged_one_is_counted() {
    let (ours, _device_peer) = UnixDatagram::pair().unwrap();
    let device = FdDevice::new(OwnedFd::from(ours), Framing::Raw).unwrap();
    let udp = Udp::bind(0).unwrap();
    let port = udp.local_port().unwrap();
    let (commands, cmd_rx) = tokio::sync::mpsc::channel(4);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mine = DiscoPrivateKey::from_bytes([1; 32]);
    let theirs = DiscoPrivateKey::from_bytes([2; 32]);
    let peer_key = [7u8; 32];
    let run = tokio::spawn(runner::run(
        PeerSet::new([9; 32]),
        device,
        udp,
        cmd_rx,
        runner::RunOptions {
            disco: Some(mine.clone()),
            ..Default::default()
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    commands
        .send(WgCommand::UpsertPeer(PeerConfig {
            public_key: peer_key,
            preshared_key: None,
            allowed_ips: vec![],
            endpoint: None,
            persistent_keepalive: None,
        }))
        .await
        .unwrap();
    commands
        .send(WgCommand::SetPeerDisco {
            key: peer_key,
            disco: theirs.public_key(),
            endpoints: vec![],
        })
        .await
        .unwrap();

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = ("127.0.0.1", port);
    let ping = Message::Ping(Ping {
        tx_id: [5; 12],
        node_key: None,
    });
    // Forged: their key in the header, sealed by a stranger.
    let stranger = DiscoPrivateKey::from_bytes([3; 32]);
    let mut forged = disco::seal(&stranger, &mine.public_key(), &ping);
    forged[6..38].copy_from_slice(theirs.public_key().as_bytes());
    sock.send_to(&forged, to).await.unwrap();
    sock.send_to(&disco::seal(&theirs, &mine.public_key(), &ping), to)
        .await
        .unwrap();

    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .expect("a pong within 2 s")
        .unwrap();
    let (from, msg) = disco::open(&theirs, &buf[..n]).unwrap();
    assert_eq!(from, mine.public_key());
    let Message::Pong(pong) = msg else {
        panic!("want a pong, got {msg:?}");
    };
    assert_eq!(pong.tx_id, [5; 12]);
    assert_eq!(pong.src, sock.local_addr().unwrap());

    let (tx, rx) = tokio::sync::oneshot::channel();
    commands.send(WgCommand::Stats(tx)).await.unwrap();
    let stats = rx.await.unwrap();
    assert_eq!(stats.disco_dropped.undecryptable, 1);
    assert_eq!(stats.not_wireguard.disco, 2);

    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}
