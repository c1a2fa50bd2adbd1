//! The fault campaign (issue #17): a TCP transfer through an agent's echo service spans each
//! fault, and every byte comes back — the SHA-256 of what returned is the SHA-256 of what
//! was sent. In process, on the testbed: 50 % relay loss for 10 s, the DERP relay restarted,
//! the tailnet connection dropped while a workspace changes, and a wake, each in the middle
//! of a transfer. (Loss on the direct UDP path and an address change are namespace tests.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use codervpn_engine::session::join::TailnetConnector;
use codervpn_testbed::agent::ECHO_PORT;
use codervpn_testbed::{Testbed, TestbedConfig};
use common::{started, wait_update};
use ring::digest::{SHA256, digest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes per transfer, and how they are paced (so that the transfer outlasts the fault's
/// start: ≈ 1 MB/s when nothing is wrong).
const TOTAL: usize = 3 * 1024 * 1024;
const CHUNK: usize = 16 * 1024;
const PACE: Duration = Duration::from_millis(15);
/// A transfer must end within this, fault included.
const LIMIT: Duration = Duration::from_secs(120);

/// DERP only: on one host a direct path would carry the traffic and miss the relay faults.
async fn derp_only(workspaces: usize) -> Testbed {
    Testbed::start(TestbedConfig {
        workspaces,
        disable_direct_connections: true,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Pseudo-random bytes (xorshift), so that a shifted or repeated stretch shows.
fn payload() -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..TOTAL)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends the payload through `ip`'s echo service, paced; once a quarter has come back,
/// runs `fault` (which may take its time) while the transfer goes on. Asserts that the
/// SHA-256 of what came back is the payload's; returns how long it all took.
async fn transfer_across<F, Fut>(connector: &TailnetConnector, ip: &str, fault: F) -> Duration
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stack = connector.stack().unwrap();
    let ip: IpAddr = ip.parse().unwrap();
    let started = Instant::now();
    let echo = tokio::time::timeout(
        Duration::from_secs(30),
        stack.connect((ip, ECHO_PORT).into()),
    )
    .await
    .expect("connect timed out")
    .expect("connect");
    let data = payload();
    let want = digest(&SHA256, &data);
    let (mut rd, mut wr) = tokio::io::split(echo);
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(CHUNK) {
            wr.write_all(chunk).await.unwrap();
            tokio::time::sleep(PACE).await;
        }
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(TOTAL);
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        let mut fault = Some(fault);
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
            if back.len() >= TOTAL / 4
                && let Some(f) = fault.take()
            {
                // The fault runs beside the reading: the echo must keep being drained.
                let run = f();
                tokio::pin!(run);
                let mut eof = false;
                loop {
                    tokio::select! {
                        () = &mut run => break,
                        r = rd.read(&mut buf), if !eof => {
                            let n = r.unwrap();
                            eof = n == 0;
                            back.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                if eof {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(LIMIT, read_all)
        .await
        .expect("the transfer did not finish in time");
    writer.await.unwrap();
    assert_eq!(back.len(), TOTAL, "bytes back");
    assert_eq!(
        hex::encode(digest(&SHA256, &back)),
        hex::encode(want),
        "SHA-256 of the transfer"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_relayed_packets_lost_for_10_s_loses_no_byte() {
    let tb = derp_only(1).await;
    let (m, connector, _) = started(&tb).await;
    let agent = tb.deployment().agent_summaries()[0].clone();
    let took = transfer_across(&connector, &agent.ip, || async {
        tb.set_relay_loss(0.5);
        tokio::time::sleep(Duration::from_secs(10)).await;
        tb.set_relay_loss(0.0);
    })
    .await;
    assert!(
        tb.derp().dropped_by_fault() > 0,
        "the fault dropped nothing"
    );
    eprintln!("3 MiB across 10 s of 50 % relay loss: {took:?}");
    assert!(m.client.stop().await.unwrap().success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restart_mid_transfer_loses_no_byte() {
    let tb = derp_only(1).await;
    let (m, connector, _) = started(&tb).await;
    let agent = tb.deployment().agent_summaries()[0].clone();
    let took = transfer_across(&connector, &agent.ip, || tb.restart_derp()).await;
    eprintln!("3 MiB across a relay restart: {took:?}");
    assert!(m.client.stop().await.unwrap().success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_mid_transfer_loses_no_byte() {
    let tb = derp_only(1).await;
    let (m, connector, _) = started(&tb).await;
    let agent = tb.deployment().agent_summaries()[0].clone();
    let client = m.client.clone();
    let took = transfer_across(&connector, &agent.ip, || async move {
        client.wake().await.unwrap();
    })
    .await;
    eprintln!("3 MiB across a wake: {took:?}");
    assert!(m.client.stop().await.unwrap().success);
}

/// The coordinator goes away, a workspace stops while it is away (so the change can only
/// arrive after the redial: no race in the test), and it comes back: the deletion reaches
/// the manager, and a transfer to the other workspace's agent spans the whole outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_change_during_a_coordinator_outage_arrives_after_the_redial() {
    let tb = derp_only(2).await;
    let (mut m, connector, _) = started(&tb).await;
    let agents = tb.deployment().agent_summaries();
    let (gone, stays) = (agents[0].clone(), agents[1].clone());
    let resumed_before = tb.resumed_connections();
    let took = transfer_across(&connector, &stays.ip, || async {
        tb.set_tailnet_unavailable(true);
        tb.drop_tailnet_connections();
        tb.set_workspace_running(&gone.workspace, false);
        tokio::time::sleep(Duration::from_secs(2)).await;
        tb.set_tailnet_unavailable(false);
    })
    .await;
    let u = wait_update(&mut m, |u| !u.deleted_agents.is_empty()).await;
    assert_eq!(u.deleted_agents[0].name, gone.name);
    assert!(
        tb.resumed_connections() > resumed_before,
        "the redial presented its resume token"
    );
    eprintln!("3 MiB across a 2 s coordinator outage: {took:?}");
    assert!(m.client.stop().await.unwrap().success);
}
