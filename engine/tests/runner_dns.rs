//! The WireGuard runner answers DNS for workspace names itself: a query from the device to
//! `[fd60:627a:a42b::53]:53` comes back from the device, and never goes to a peer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv6Addr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use codervpn_dns::{AgentInfo, CODER_DNS_ADDR, SharedZone, Zone, ZoneConfig};
use codervpn_engine::device::{FdDevice, Framing};
use codervpn_engine::net::runner::{self, WgCommand};
use codervpn_engine::net::udp::Udp;
use codervpn_engine::net::wg::PeerSet;

fn query_packet(name: &str) -> Vec<u8> {
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 28, 0, 1]);
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

#[tokio::test]
async fn dns_queries_from_the_device_are_answered_by_the_runner() {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
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
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(4);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(runner::run(
        PeerSet::new([9; 32]),
        device,
        Udp::bind(0).unwrap(),
        cmd_rx,
        runner::RunOptions {
            dns: Some(Arc::new(SharedZone::new(zone))),
            relay: None,
        },
        async {
            let _ = stop_rx.await;
        },
    ));
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
    let want = "fd60:627a:a42b:101::".parse::<Ipv6Addr>().unwrap().octets();
    assert!(
        reply.windows(16).any(|w| w == want),
        "the agent's address is in the answer"
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    cmd_tx.send(WgCommand::Stats(tx)).await.unwrap();
    let stats = rx.await.unwrap();
    assert_eq!(
        stats.dropped.no_route, 0,
        "the query was not routed to a peer"
    );
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
}
