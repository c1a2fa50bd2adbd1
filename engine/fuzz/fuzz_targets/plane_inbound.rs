//! Fuzzes the data plane core's inbound side (`net/plane.rs`): every datagram passes the
//! one demux (`net/path.rs`) to the STUN prober, disco or WireGuard, whichever path brought
//! it. A plane with one relayed peer that has a disco key is fed the input split into
//! datagrams, alternately as UDP from the peer's endpoint and as relayed by DERP from its
//! node key (and from a node nobody routes), with timer runs in between.
//!
//! Checks: no panic; whatever the plane queued drains; nothing reaches the device (no input
//! here can carry a WireGuard session's keys).

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use codervpn_engine::net::derp::NodePublicKey;
use codervpn_engine::net::disco::DiscoPrivateKey;
use codervpn_engine::net::plane::Plane;
use codervpn_engine::net::relay::{Relay, RelayIn};
use codervpn_engine::net::runner::{RunOptions, WgCommand};
use codervpn_engine::net::wg::{PeerConfig, PeerSet, public_key};
use libfuzzer_sys::fuzz_target;
use tokio::sync::mpsc;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let (_tx, rx) = mpsc::channel(1);
    let opts = RunOptions {
        relay: Some(Relay::new(rx)),
        disco: Some(DiscoPrivateKey::from_bytes([3; 32])),
        ..RunOptions::default()
    };
    let mut plane = Plane::new(PeerSet::new([1; 32]), opts, now);
    let peer = public_key(&[2; 32]);
    let peer_udp: SocketAddr = "192.0.2.2:41641".parse().unwrap();
    for cmd in [
        WgCommand::UpsertRelayedPeer {
            config: PeerConfig {
                public_key: peer,
                preshared_key: None,
                allowed_ips: vec!["fd60:627a:a42b::2/128".parse().unwrap()],
                endpoint: None,
                persistent_keepalive: None,
            },
            derp_region: 1,
        },
        WgCommand::SetPeerDisco {
            key: peer,
            disco: DiscoPrivateKey::from_bytes([4; 32]).public_key(),
            endpoints: vec![peer_udp],
        },
    ] {
        plane.handle_command(now, cmd);
    }
    // Datagrams: a length byte, then that many bytes.
    let mut rest = data;
    let mut i = 0u32;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (datagram, tail) = tail.split_at(n);
        rest = tail;
        let at = now + Duration::from_millis(u64::from(i) * 300);
        match i % 3 {
            0 => plane.handle_udp(at, peer_udp, datagram),
            1 => plane.handle_relayed(
                at,
                &RelayIn {
                    region: 1,
                    from: NodePublicKey::from_bytes(peer),
                    data: Bytes::copy_from_slice(datagram),
                },
            ),
            _ => plane.handle_relayed(
                at,
                &RelayIn {
                    region: 2,
                    from: NodePublicKey::from_bytes([9; 32]),
                    data: Bytes::copy_from_slice(datagram),
                },
            ),
        }
        plane.handle_timeout(at);
        i += 1;
    }
    plane.out.drain_udp(|batch| batch.clear());
    let mut delivered = 0;
    plane.out.drain_tunnel(|_| delivered += 1);
    assert_eq!(delivered, 0);
    assert!(plane.out.is_empty());
});
