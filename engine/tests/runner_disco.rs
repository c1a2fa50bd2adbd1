//! The WireGuard runner keeps disco and STUN packets away from WireGuard: they are counted as
//! such (`WgStats::not_wireguard`), not as WireGuard garbage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use codervpn_engine::device::{FdDevice, Framing};
use codervpn_engine::net::disco::{self, CallMeMaybe, DiscoPrivateKey, Message};
use codervpn_engine::net::runner::{self, NotWireGuard, WgCommand};
use codervpn_engine::net::stun;
use codervpn_engine::net::udp::Udp;
use codervpn_engine::net::wg::PeerSet;

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

    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}
