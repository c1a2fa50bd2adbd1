//! DERP relay through a real server on loopback between two real clients (plain HTTP
//! upgrade, TCP_NODELAY), 1200-byte packets:
//!
//! - `derp_relay/throughput_1200B`: packets per second from A to B, with at most 256
//!   packets in flight (below the server's 512-packet per-client queue, so nothing is
//!   dropped and every packet is counted);
//! - `derp_relay/round_trip_1200B`: A → relay → B, B echoes, B → relay → A;
//! - `derp_relay/tcp_echo_round_trip_1200B`: the same exchange over one plain loopback TCP
//!   echo, for what the relay adds.
//!
//! - `…_via_testbed`: the same two measurements through the testbed's `/derp` endpoint
//!   (axum and hyper's upgrade in front of the same relay), what tests and the demo use.
//!
//! `cargo bench -p codervpn-benches --bench derp -- --warm-up-time 1 --measurement-time 5`
//!
//! 2026-11-26, 2-vCPU dev machine with other sessions' builds running (load ≈ 4.5), medians
//! of 20 samples: throughput 1.45 µs/packet ≈ 690 k packets/s (≈ 830 MB/s of payload);
//! round trip through the relay 86 µs vs 12 µs for the plain TCP echo, so the relay adds
//! ≈ 74 µs per round trip (two relayed hops, each crossing four tasks).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codervpn_engine::net::derp::{
    ClientEvent, DerpEvent, DerpHandle, DerpServer, NodePrivateKey, NodePublicKey, connect,
};
use codervpn_testbed::{Testbed, TestbedConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, mpsc};

const PACKET: usize = 1200;
const WINDOW: u64 = 256;

struct Pair {
    a: DerpHandle,
    a_events: mpsc::Receiver<DerpEvent>,
    b: DerpHandle,
    b_events: mpsc::Receiver<DerpEvent>,
}

async fn connected(url: &url::Url) -> (DerpHandle, mpsc::Receiver<DerpEvent>) {
    let conn = connect(url, &[], NodePrivateKey::generate()).await.unwrap();
    let mut events = conn.events;
    loop {
        if let DerpEvent::Relay(ClientEvent::Connected { .. }) = events.recv().await.unwrap() {
            return (conn.handle, events);
        }
    }
}

/// Two connected clients: through a bare `DerpServer` on loopback, or through the
/// testbed's `/derp` (axum + hyper upgrade in front of the same relay).
async fn setup(testbed: bool) -> (Pair, Option<Testbed>) {
    let (url, tb) = if testbed {
        let tb = Testbed::start(TestbedConfig {
            workspaces: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        (tb.url().join("derp").unwrap(), Some(tb))
    } else {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url =
            url::Url::parse(&format!("http://{}/derp", listener.local_addr().unwrap())).unwrap();
        let server = DerpServer::new(NodePrivateKey::generate());
        tokio::spawn(async move { server.listen(listener).await });
        (url, None)
    };
    let (a, a_events) = connected(&url).await;
    let (b, b_events) = connected(&url).await;
    (
        Pair {
            a,
            a_events,
            b,
            b_events,
        },
        tb,
    )
}

async fn next_packet(events: &mut mpsc::Receiver<DerpEvent>) -> (NodePublicKey, Bytes) {
    loop {
        if let DerpEvent::Relay(ClientEvent::Packet { from, data }) = events.recv().await.unwrap() {
            return (from, data);
        }
    }
}

fn relay(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let mut g = c.benchmark_group("derp_relay");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    let payload = Bytes::from(vec![0xa5u8; PACKET]);
    for (variant, testbed) in [("", false), ("_via_testbed", true)] {
        // Throughput: B counts arrivals; A keeps at most WINDOW packets in flight.
        let (Pair { a, b, b_events, .. }, _tb) = rt.block_on(setup(testbed));
        let received = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        {
            let (received, progress) = (received.clone(), progress.clone());
            let mut b_events = b_events;
            rt.spawn(async move {
                while let Some(e) = b_events.recv().await {
                    if let DerpEvent::Relay(ClientEvent::Packet { .. }) = e {
                        received.fetch_add(1, Ordering::Release);
                        progress.notify_one();
                    }
                }
            });
        }
        let payload = Bytes::from(vec![0xa5u8; PACKET]);
        let mut sent = 0u64;
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("throughput_1200B{variant}"), |bench| {
            bench.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let target = sent + iters;
                    while sent < target {
                        while sent - received.load(Ordering::Acquire) >= WINDOW {
                            progress.notified().await;
                        }
                        a.send(b.public_key(), payload.clone()).await.unwrap();
                        sent += 1;
                    }
                    while received.load(Ordering::Acquire) < target {
                        progress.notified().await;
                    }
                    start.elapsed()
                })
            })
        });
        drop((a, b));

        // Round trip: B echoes every packet back to its sender.
        let (
            Pair {
                a,
                mut a_events,
                b,
                mut b_events,
            },
            _tb2,
        ) = rt.block_on(setup(testbed));
        let b_key = b.public_key();
        rt.spawn(async move {
            loop {
                let (from, data) = next_packet(&mut b_events).await;
                b.send(from, data).await.unwrap();
            }
        });
        g.bench_function(format!("round_trip_1200B{variant}"), |bench| {
            bench.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        a.send(b_key, payload.clone()).await.unwrap();
                        next_packet(&mut a_events).await;
                    }
                    start.elapsed()
                })
            })
        });
    }

    // Baseline: one loopback TCP echo of the same size.
    let (mut tcp, _echo) = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = vec![0u8; PACKET];
            while s.read_exact(&mut buf).await.is_ok() {
                s.write_all(&buf).await.unwrap();
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        (tcp, echo)
    });
    let mut buf = vec![0u8; PACKET];
    g.bench_function("tcp_echo_round_trip_1200B", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    tcp.write_all(&payload).await.unwrap();
                    tcp.read_exact(&mut buf).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
