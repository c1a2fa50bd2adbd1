//! Log forwarding never blocks the tunnel on a manager that does not read: records past
//! the connection's queue are dropped and counted (`logs::dropped_records`), and what was
//! queued still arrives once the manager reads (issue #17: the counter was never checked).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use codervpn_engine::logs::{self, ManagerLogLayer, TUNNEL_FIELD};
use codervpn_proto::vpn::tunnel_message;
use codervpn_proto::{Connection, Incoming, ManagerSide, TunnelSide, VersionList};
use tokio::net::UnixStream;
use tracing_subscriber::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_that_does_not_read_costs_dropped_records_not_a_stall() {
    let (a, b) = UnixStream::pair().unwrap();
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let tunnel = tokio::spawn(async move {
        Connection::<TunnelSide>::handshake(br, bw, VersionList::current())
            .await
            .unwrap()
    });
    let manager = Connection::<ManagerSide>::handshake(ar, aw, VersionList::current())
        .await
        .unwrap();
    let tunnel = tunnel.await.unwrap();
    let guard = logs::register(tunnel.handle().clone());
    let _sub =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(ManagerLogLayer));

    let before = logs::dropped_records();
    let started = Instant::now();
    let span = tracing::info_span!("tunnel", codervpn_tunnel = guard.id());
    assert_eq!(TUNNEL_FIELD, "codervpn_tunnel");
    span.in_scope(|| {
        for i in 0..20_000u32 {
            tracing::info!(target: "codervpn_engine::tunnel", i, "a record the manager is too slow for");
        }
    });
    let took = started.elapsed();
    let dropped = logs::dropped_records() - before;
    assert!(took < Duration::from_secs(5), "logging stalled: {took:?}");

    // What was queued arrives once the manager reads.
    let (_handle, mut incoming) = manager.into_parts();
    let mut got = 0u32;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), incoming.recv()).await {
        if let Incoming::OneWay(msg) = m
            && matches!(msg.msg, Some(tunnel_message::Msg::Log(_)))
        {
            got += 1;
        }
    }
    assert!(dropped > 0, "nothing was dropped");
    assert!(got > 0, "no record arrived");
    assert_eq!(
        u64::from(got) + dropped,
        20_000,
        "every record either arrived or was counted as dropped"
    );
    drop(guard);
}
