//! Dialing the testbed's tailnet endpoint the way the Go tunnel does: websocket
//! `/api/v2/tailnet?version=2.3` → yamux → dRPC, then WorkspaceUpdates, StreamDERPMaps,
//! RefreshResumeToken and Coordinate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use codervpn_engine::session::rpc::{DialError, DialOptions, TailnetClient};
use codervpn_proto::tailnet::{CoordinateRequest, coordinate_request};
use codervpn_testbed::{EMBEDDED_REGION_ID, TOKEN_HEADER, Testbed, TestbedConfig};

const T: Duration = Duration::from_secs(10);

async fn dial(tb: &Testbed) -> TailnetClient {
    let opts = DialOptions {
        headers: vec![(TOKEN_HEADER.into(), tb.token())],
        ..Default::default()
    };
    TailnetClient::dial(tb.url(), &opts).await.unwrap()
}

#[tokio::test]
async fn workspace_updates_start_with_a_snapshot_then_send_diffs() {
    let tb = Testbed::start(TestbedConfig {
        workspaces: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = dial(&tb).await;
    let mut updates = client
        .workspace_updates(&tb.deployment().user_id.0)
        .await
        .unwrap();
    let snapshot = tokio::time::timeout(T, updates.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.upserted_workspaces.len(), 2);
    assert_eq!(snapshot.upserted_agents.len(), 2);
    assert!(snapshot.deleted_agents.is_empty());
    let dev1 = tb.deployment().workspaces[0].clone();
    assert!(
        snapshot
            .upserted_agents
            .iter()
            .any(|a| a.workspace_id == dev1.id.0 && a.name == "main")
    );

    // Stopping a workspace: its agent is deleted and the workspace upserted as stopped.
    assert!(tb.set_workspace_running("dev1", false));
    let diff = tokio::time::timeout(T, updates.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(diff.deleted_agents.len(), 1);
    assert_eq!(diff.deleted_agents[0].id, dev1.agents[0].id.0);
    assert_eq!(diff.upserted_workspaces.len(), 1);
    assert_eq!(diff.upserted_workspaces[0].status, 5, "STOPPED");
    // Starting it again brings an agent back.
    assert!(tb.set_workspace_running("dev1", true));
    let diff = tokio::time::timeout(T, updates.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(diff.upserted_agents.len(), 1);
    assert_eq!(diff.upserted_workspaces[0].status, 3, "RUNNING");
}

#[tokio::test]
async fn workspace_updates_for_another_owner_fail_with_an_error() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let client = dial(&tb).await;
    let mut updates = client.workspace_updates(&[0u8; 16]).await.unwrap();
    let err = tokio::time::timeout(T, updates.message())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("is not the authenticated user"),
        "{err}"
    );
}

#[tokio::test]
async fn derp_maps_resume_tokens_and_coordination_are_served() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let client = dial(&tb).await;
    let mut maps = client.stream_derp_maps().await.unwrap();
    let map = tokio::time::timeout(T, maps.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let region = &map.regions[&EMBEDDED_REGION_ID];
    assert!(region.embedded_relay);
    let relay = region.nodes.iter().find(|n| !n.stun_only).unwrap();
    assert_eq!(relay.derp_port, i32::from(tb.url().port().unwrap()));
    assert!(relay.force_http);
    assert_eq!(relay.stun_port, -1, "the relay node serves no STUN");
    let stun = region.nodes.iter().find(|n| n.stun_only).unwrap();
    assert_eq!(
        format!("{}:{}", stun.host_name, stun.stun_port),
        tb.stun_addr().unwrap().to_string()
    );

    let token = client.refresh_resume_token().await.unwrap();
    assert!(token.token.starts_with("resume-"));
    assert_eq!(token.refresh_in.unwrap().seconds, 1800);

    // The simulated agents register with the coordinator as they come up.
    assert!(tb.agents_ready(T).await, "agents never registered");
    let mut coord = client.coordinate().await.unwrap();
    let agent = tb.deployment().workspaces[0].agents[0].id.0.to_vec();
    coord
        .send(&CoordinateRequest {
            add_tunnel: Some(coordinate_request::Tunnel { id: agent.clone() }),
            ..Default::default()
        })
        .await
        .unwrap();
    // The agent's node comes back at once (kind NODE), with a 34-byte `np` key.
    let resp = tokio::time::timeout(T, coord.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let update = &resp.peer_updates[0];
    assert_eq!(update.id, agent);
    assert_eq!(update.kind, 1, "NODE");
    let node = update.node.as_ref().unwrap();
    assert_eq!(&node.key[..2], b"np");
    assert_eq!(node.key.len(), 34);
    assert_eq!(i64::from(node.preferred_derp), EMBEDDED_REGION_ID);
    coord
        .send(&CoordinateRequest {
            disconnect: Some(Default::default()),
            ..Default::default()
        })
        .await
        .unwrap();
    // The server ends the stream after disconnect.
    let end = tokio::time::timeout(T, coord.message()).await.unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn wrong_token_or_version_is_refused_at_the_upgrade() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let bad = DialOptions {
        headers: vec![(TOKEN_HEADER.into(), "nope".into())],
        ..Default::default()
    };
    let err = TailnetClient::dial(tb.url(), &bad).await.err().unwrap();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(err.is_permanent());
    assert!(matches!(err, DialError::Http { .. }));
}
