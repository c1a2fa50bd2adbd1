//! WireGuard per-packet cost: our peer set (boringtun inside) beside a bare `ring`
//! ChaCha20-Poly1305 seal/open of the same bytes, at 64, 1280 and 1420 bytes; and the
//! cost of a full handshake. Beside them, the Internet checksum every TUN packet needs
//! (the kernel leaves it to us with `TUN_F_CSUM`): ours beside RFC 1071 word by word.
//!
//! `cargo bench -p codervpn-benches --bench wg`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;

use codervpn_engine::device::checksum;
use codervpn_engine::net::path::Via;
use codervpn_engine::net::wg::{Emit, PeerConfig, PeerSet, public_key};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

const SIZES: [usize; 3] = [64, 1280, 1420];

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

struct Pair {
    a: PeerSet,
    b: PeerSet,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
}

fn pair() -> Pair {
    let (ka, kb) = ([1u8; 32], [2u8; 32]);
    let a_addr: SocketAddr = "192.0.2.1:1".parse().unwrap();
    let b_addr: SocketAddr = "192.0.2.2:2".parse().unwrap();
    let peer = |k: &[u8; 32], ip: &str, ep| PeerConfig {
        public_key: public_key(k),
        preshared_key: None,
        allowed_ips: vec![ip.parse().unwrap()],
        endpoint: Some(ep),
        persistent_keepalive: None,
    };
    let mut a = PeerSet::new(ka);
    let mut b = PeerSet::new(kb);
    a.upsert_peer(peer(&kb, "10.0.0.2/32", b_addr));
    b.upsert_peer(peer(&ka, "10.0.0.1/32", a_addr));
    Pair {
        a,
        b,
        a_addr,
        b_addr,
    }
}

/// Runs a handshake to completion; returns whether data reached b.
fn handshake(p: &mut Pair, packet: &[u8]) -> bool {
    let mut buf = vec![0u8; 2048];
    let mut to_b: Vec<Vec<u8>> = Vec::new();
    p.a.encapsulate(packet, &mut buf, &mut |e| {
        if let Emit::Network { data, .. } = e {
            to_b.push(data.to_vec());
        }
    });
    let mut delivered = false;
    for _ in 0..4 {
        let mut to_a = Vec::new();
        for d in to_b.drain(..) {
            p.b.decapsulate(Via::Udp(p.a_addr), &d, &mut buf, &mut |e| match e {
                Emit::Network { data, .. } => to_a.push(data.to_vec()),
                Emit::Tunnel(_) => delivered = true,
            });
        }
        for d in to_a {
            p.a.decapsulate(Via::Udp(p.b_addr), &d, &mut buf, &mut |e| {
                if let Emit::Network { data, .. } = e {
                    to_b.push(data.to_vec());
                }
            });
        }
    }
    delivered
}

fn encap_decap(c: &mut Criterion) {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]).unwrap());
    for size in SIZES {
        let packet = ipv4(size);
        let mut g = c.benchmark_group(format!("wg_{size}B"));
        g.throughput(Throughput::Bytes(size as u64));

        let mut p = pair();
        assert!(handshake(&mut p, &packet));
        let mut out = vec![0u8; 2048];
        g.bench_function(BenchmarkId::new("encapsulate", "ours"), |b| {
            b.iter(|| {
                let mut n = 0;
                p.a.encapsulate(black_box(&packet), &mut out, &mut |e| {
                    if let Emit::Network { data, .. } = e {
                        n = data.len();
                    }
                });
                black_box(n)
            })
        });
        let mut counter = 0u64;
        let mut sealed = vec![0u8; size + 16];
        g.bench_function(BenchmarkId::new("seal", "ring"), |b| {
            b.iter(|| {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_le_bytes());
                sealed[..size].copy_from_slice(black_box(&packet));
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::empty(),
                        &mut sealed[..size],
                    )
                    .unwrap();
                sealed[size..].copy_from_slice(tag.as_ref());
                black_box(sealed[0])
            })
        });

        // Decapsulation needs a fresh datagram each time (replays are rejected): encrypt a
        // batch in setup, decrypt it in order in the measured routine.
        let mut p = pair();
        assert!(handshake(&mut p, &packet));
        let mut buf = vec![0u8; 2048];
        let mut dec = vec![0u8; 2048];
        g.bench_function(BenchmarkId::new("decapsulate", "ours"), |b| {
            b.iter_batched_ref(
                || {
                    let mut d = Vec::new();
                    p.a.encapsulate(&packet, &mut buf, &mut |e| {
                        if let Emit::Network { data, .. } = e {
                            d = data.to_vec();
                        }
                    });
                    d
                },
                |d| {
                    let mut n = 0;
                    p.b.decapsulate(Via::Udp(p.a_addr), d, &mut dec, &mut |e| {
                        if let Emit::Tunnel(t) = e {
                            n = t.len();
                        }
                    });
                    assert_eq!(n, size);
                },
                BatchSize::SmallInput,
            )
        });
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&1u64.to_le_bytes());
        let mut ciphertext = packet.clone();
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut ciphertext,
            )
            .unwrap();
        ciphertext.extend_from_slice(tag.as_ref());
        let mut work = vec![0u8; size + 16];
        g.bench_function(BenchmarkId::new("open", "ring"), |b| {
            b.iter(|| {
                work.copy_from_slice(black_box(&ciphertext));
                let plain = key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut work)
                    .unwrap();
                black_box(plain.len())
            })
        });
        g.finish();
    }
}

fn handshake_time(c: &mut Criterion) {
    let packet = ipv4(64);
    c.bench_function("wg_full_handshake", |b| {
        b.iter_batched(
            pair,
            |mut p| assert!(handshake(&mut p, &packet)),
            BatchSize::SmallInput,
        )
    });
}

/// RFC 1071 word by word: what `checksum::sum16` did before it summed 32-bit words.
fn word_by_word(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for w in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        if sum > 0xffff_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    checksum::fold(sum)
}

fn internet_checksum(c: &mut Criterion) {
    for size in SIZES {
        let data = ipv4(size);
        let mut g = c.benchmark_group(format!("checksum_{size}B"));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("sum16", "ours"), |b| {
            b.iter(|| checksum::fold(checksum::sum16(black_box(&data), 0)))
        });
        g.bench_function(BenchmarkId::new("sum16", "word-by-word"), |b| {
            b.iter(|| word_by_word(black_box(&data)))
        });
        g.finish();
    }
}

criterion_group!(benches, encap_decap, handshake_time, internet_checksum);
criterion_main!(benches);
