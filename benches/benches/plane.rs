//! What the data plane's core adds per packet (issue #16): one 1280-byte packet from a's
//! device to b's device, through the peer sets alone (what the runner did before the core
//! existed, its copies included) and through two `Plane`s (demux, outbox queues, the
//! drains). No sockets: the difference is the layer's own cost.
//!
//! `cargo bench -p codervpn-benches --bench plane`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use codervpn_engine::net::path::Via;
use codervpn_engine::net::plane::Plane;
use codervpn_engine::net::runner::{RunOptions, WgCommand};
use codervpn_engine::net::wg::{Emit, PeerConfig, PeerSet, public_key};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const LEN: usize = 1280;

fn ipv4(len: usize) -> Vec<u8> {
    let mut p = vec![
        0x45,
        0,
        (len >> 8) as u8,
        len as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
        10,
        0,
        0,
        1,
        10,
        0,
        0,
        2,
    ];
    p.resize(len, 0xab);
    p
}

fn peer(key: &[u8; 32], ip: &str, ep: SocketAddr) -> PeerConfig {
    PeerConfig {
        public_key: public_key(key),
        preshared_key: None,
        allowed_ips: vec![ip.parse().unwrap()],
        endpoint: Some(ep),
        persistent_keepalive: None,
    }
}

const A: [u8; 32] = [1; 32];
const B: [u8; 32] = [2; 32];

fn addrs() -> (SocketAddr, SocketAddr) {
    (
        "192.0.2.1:1".parse().unwrap(),
        "192.0.2.2:2".parse().unwrap(),
    )
}

/// Moves a's queued datagrams to b and back until both are quiet; returns what reached
/// b's device.
fn pump(a: &mut Plane, b: &mut Plane, now: Instant) -> usize {
    let (a_addr, b_addr) = addrs();
    let mut delivered = 0;
    for _ in 0..8 {
        a.out.drain_udp(|batch| {
            for d in batch.datagrams() {
                b.handle_udp(now, a_addr, d);
            }
            batch.clear();
        });
        b.out.drain_udp(|batch| {
            for d in batch.datagrams() {
                a.handle_udp(now, b_addr, d);
            }
            batch.clear();
        });
        b.out.drain_tunnel(|p| {
            black_box(p);
            delivered += 1;
        });
        a.out.drain_tunnel(|p| {
            black_box(p);
        });
    }
    delivered
}

fn planes() -> (Plane, Plane) {
    let now = Instant::now();
    let (a_addr, b_addr) = addrs();
    let mut a = Plane::new(PeerSet::new(A), RunOptions::default(), now);
    let mut b = Plane::new(PeerSet::new(B), RunOptions::default(), now);
    a.handle_command(now, WgCommand::UpsertPeer(peer(&B, "10.0.0.2/32", b_addr)));
    b.handle_command(now, WgCommand::UpsertPeer(peer(&A, "10.0.0.1/32", a_addr)));
    a.handle_device_packet(now, &ipv4(LEN));
    assert_eq!(pump(&mut a, &mut b, now), 1, "handshake, then the packet");
    (a, b)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("device_to_device_1280");
    g.throughput(Throughput::Bytes(LEN as u64));
    let packet = ipv4(LEN);

    // The peer sets alone, with the copies the old runner made (datagram into its send
    // batch, packet into the device).
    let (a_addr, b_addr) = addrs();
    let mut a = PeerSet::new(A);
    let mut b = PeerSet::new(B);
    a.upsert_peer(peer(&B, "10.0.0.2/32", b_addr));
    b.upsert_peer(peer(&A, "10.0.0.1/32", a_addr));
    let (mut buf_a, mut buf_b) = (vec![0u8; 65_600], vec![0u8; 65_600]);
    let (mut wire, mut device) = (Vec::with_capacity(2048), Vec::with_capacity(2048));
    // Handshake.
    let mut to_b = Vec::new();
    a.encapsulate(&packet, &mut buf_a, &mut |e| {
        if let Emit::Network { data, .. } = e {
            to_b.push(data.to_vec());
        }
    });
    for _ in 0..4 {
        let mut to_a = Vec::new();
        for d in to_b.drain(..) {
            b.decapsulate(Via::Udp(a_addr), &d, &mut buf_b, &mut |e| {
                if let Emit::Network { data, .. } = e {
                    to_a.push(data.to_vec());
                }
            });
        }
        for d in to_a {
            a.decapsulate(Via::Udp(b_addr), &d, &mut buf_a, &mut |e| {
                if let Emit::Network { data, .. } = e {
                    to_b.push(data.to_vec());
                }
            });
        }
    }
    g.bench_function("peer_sets", |bench| {
        bench.iter(|| {
            wire.clear();
            a.encapsulate(black_box(&packet), &mut buf_a, &mut |e| {
                if let Emit::Network { data, .. } = e {
                    wire.extend_from_slice(data);
                }
            });
            b.decapsulate(Via::Udp(a_addr), &wire, &mut buf_b, &mut |e| {
                if let Emit::Tunnel(p) = e {
                    device.clear();
                    device.extend_from_slice(p);
                }
            });
            black_box(&device);
        });
    });

    let (mut pa, mut pb) = planes();
    let now = Instant::now();
    g.bench_function("planes", |bench| {
        bench.iter(|| {
            pa.handle_device_packet(now, black_box(&packet));
            pa.out.drain_udp(|batch| {
                for d in batch.datagrams() {
                    pb.handle_udp(now, a_addr, d);
                }
                batch.clear();
            });
            pb.out.drain_tunnel(|p| {
                black_box(p);
            });
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
