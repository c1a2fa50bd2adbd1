//! Time from `StartRequest` to the first `PeerUpdate` against the testbed with 100
//! agents: REST login, DERP latency probe, tailnet websocket, yamux, dRPC, the
//! workspace snapshot and its conversion, through the real CoderVPN protocol on a socket
//! pair (the tunnel in-process, as nebridge's embedded mode runs it). Each iteration
//! starts a fresh tunnel, waits for the first PeerUpdate, then stops it.
//!
//! `cargo bench -p codervpn-benches --bench join`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use codervpn_engine::session::join::TailnetConnector;
use codervpn_engine::tunnel::{TunnelOptions, serve};
use codervpn_proto::manager::ManagerClient;
use codervpn_proto::vpn::{self, manager_message, tunnel_message};
use codervpn_proto::{Connection, Incoming, ManagerSide, TunnelSide, VersionList};
use codervpn_testbed::{Testbed, TestbedConfig};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::net::UnixStream;

const AGENTS: usize = 100;

/// One start → first PeerUpdate → stop; returns the time to the first PeerUpdate.
async fn once(tb: &Testbed) -> Duration {
    let (a, b) = UnixStream::pair().unwrap();
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let tunnel = tokio::spawn(async move {
        let conn = Connection::<TunnelSide>::handshake(br, bw, VersionList::current())
            .await
            .unwrap();
        let opts = TunnelOptions::new(Arc::new(TailnetConnector::default()));
        serve(conn, opts, std::future::pending()).await
    });
    let conn = Connection::<ManagerSide>::handshake(ar, aw, VersionList::current())
        .await
        .unwrap();
    let (handle, mut incoming) = conn.into_parts();
    let client = ManagerClient::new(handle.clone());
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<usize>();
    tokio::spawn(async move {
        let mut first = Some(first_tx);
        while let Some(m) = incoming.recv().await {
            match m {
                Incoming::Request { id, msg } => {
                    if let Some(tunnel_message::Msg::NetworkSettings(_)) = msg.msg {
                        let ok = vpn::ManagerMessage {
                            rpc: None,
                            msg: Some(manager_message::Msg::NetworkSettings(
                                vpn::NetworkSettingsResponse {
                                    success: true,
                                    error_message: String::new(),
                                },
                            )),
                        };
                        let _ = handle.reply(id, ok).await;
                    }
                }
                Incoming::OneWay(msg) => {
                    if let Some(tunnel_message::Msg::PeerUpdate(u)) = msg.msg
                        && let Some(tx) = first.take()
                    {
                        let _ = tx.send(u.upserted_agents.len());
                    }
                }
            }
        }
    });
    let start = Instant::now();
    let r = client
        .start(vpn::StartRequest {
            tunnel_file_descriptor: -1,
            coder_url: tb.url().to_string(),
            api_token: tb.token(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.success, "{}", r.error_message);
    let agents = first_rx.await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(agents, AGENTS);
    client.stop().await.unwrap();
    let _ = tunnel.await;
    elapsed
}

fn join(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tb = rt
        .block_on(Testbed::start(TestbedConfig {
            workspaces: AGENTS,
            ..Default::default()
        }))
        .unwrap();
    // Let the 100 simulated agents register with the coordinator and the relay.
    assert!(rt.block_on(tb.agents_ready(Duration::from_secs(30))));
    let mut g = c.benchmark_group("join");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("start_to_first_peer_update_100_agents", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(once(&tb));
            }
            total
        });
    });
    g.finish();
}

criterion_group!(benches, join);
criterion_main!(benches);
