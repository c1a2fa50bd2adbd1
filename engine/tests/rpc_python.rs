#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Cross-check with code we did not write: `tests/python/tailnet_peer.py` speaks websocket,
//! yamux (opening streams the hashicorp way) and dRPC from the spec, with messages from
//! Google's protobuf runtime, against our server stack on 127.0.0.1. Every reply must
//! re-encode with Google's encoder to the bytes prost produced, and the request Google
//! encoded must decode and re-encode with prost to the same bytes. Needs `python3` with
//! `protobuf` and `grpcio-tools` (`.ci/run` installs them).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use codervpn_engine::session::BoxFuture;
use codervpn_engine::session::rpc::tailnet;
use codervpn_engine::session::rpc::ws::serve_websocket;
use codervpn_engine::session::rpc::{Requests, Sink, Status, TailnetService};
use codervpn_proto::tailnet::coordinate_response::PeerUpdate;
use codervpn_proto::tailnet::derp_map::region::Node as DerpNode;
use codervpn_proto::tailnet::derp_map::{HomeParams, Region};
use codervpn_proto::tailnet::workspace::Status as WorkspaceStatus;
use codervpn_proto::tailnet::{
    Agent, CoordinateRequest, CoordinateResponse, DerpMap, Node, RefreshResumeTokenRequest,
    RefreshResumeTokenResponse, StreamDerpMapsRequest, Workspace, WorkspaceUpdate,
    WorkspaceUpdatesRequest,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn node() -> Node {
    Node {
        id: 42,
        as_of: Some(prost_types::Timestamp {
            seconds: 1_700_000_001,
            nanos: 7,
        }),
        key: [b"np".as_slice(), &[9; 32]].concat(),
        disco: format!("discokey:{}", "cd".repeat(32)),
        preferred_derp: 1,
        derp_latency: HashMap::from([("1-v4".to_owned(), 0.25)]),
        derp_forced_websocket: HashMap::from([(1, "reason".to_owned())]),
        addresses: vec!["fd7a:115c:a1e0::2/128".into()],
        allowed_ips: vec!["fd7a:115c:a1e0::2/128".into(), "fd60::/64".into()],
        endpoints: vec!["198.51.100.7:3478".into()],
    }
}

fn derp_map() -> DerpMap {
    DerpMap {
        home_params: Some(HomeParams {
            region_score: HashMap::from([(999, 1.5)]),
        }),
        regions: HashMap::from([(
            999,
            Region {
                region_id: 999,
                embedded_relay: true,
                region_code: "coder".into(),
                region_name: "Coder".into(),
                avoid: true,
                nodes: vec![DerpNode {
                    name: "999a".into(),
                    region_id: 999,
                    host_name: "coder.example.com".into(),
                    cert_name: "cert".into(),
                    ipv4: "192.0.2.10".into(),
                    ipv6: "none".into(),
                    stun_port: -1,
                    stun_only: false,
                    derp_port: 443,
                    insecure_for_tests: true,
                    force_http: true,
                    stun_test_ip: "192.0.2.11".into(),
                    can_port_80: true,
                }],
            },
        )]),
    }
}

fn update(owner: &[u8]) -> WorkspaceUpdate {
    WorkspaceUpdate {
        upserted_workspaces: vec![Workspace {
            id: owner.to_vec(),
            name: "dev".into(),
            status: WorkspaceStatus::Running as i32,
        }],
        upserted_agents: vec![Agent {
            id: vec![1; 16],
            name: "main".into(),
            workspace_id: owner.to_vec(),
        }],
        deleted_workspaces: vec![Workspace {
            id: vec![2; 16],
            name: "old".into(),
            status: WorkspaceStatus::Deleted as i32,
        }],
        deleted_agents: vec![Agent {
            id: vec![3; 16],
            name: "gone".into(),
            workspace_id: vec![2; 16],
        }],
    }
}

fn refresh() -> RefreshResumeTokenResponse {
    RefreshResumeTokenResponse {
        token: "resume-token-from-rust".into(),
        refresh_in: Some(prost_types::Duration {
            seconds: 3000,
            nanos: 1,
        }),
        expires_at: Some(prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        }),
    }
}

fn coordinate_response() -> CoordinateResponse {
    CoordinateResponse {
        peer_updates: vec![PeerUpdate {
            id: vec![4; 16],
            node: Some(node()),
            kind: 1,
            reason: "because".into(),
        }],
        error: "no error".into(),
    }
}

/// Serves the fixtures above; reports the prost re-encoding of every request it decodes.
struct Fixed {
    requests: mpsc::UnboundedSender<(&'static str, Vec<u8>)>,
}

impl TailnetService for Fixed {
    fn coordinate(
        self: Arc<Self>,
        mut requests: Requests<CoordinateRequest>,
        responses: Sink<CoordinateResponse>,
    ) -> BoxFuture<Result<(), Status>> {
        Box::pin(async move {
            while let Some(req) = requests.message().await.unwrap() {
                self.requests
                    .send(("coordinate", req.encode_to_vec()))
                    .unwrap();
                responses.send(&coordinate_response()).await.unwrap();
            }
            Ok(())
        })
    }

    fn stream_derp_maps(
        self: Arc<Self>,
        _: StreamDerpMapsRequest,
        maps: Sink<DerpMap>,
    ) -> BoxFuture<Result<(), Status>> {
        Box::pin(async move {
            maps.send(&derp_map()).await.unwrap();
            maps.send(&DerpMap::default()).await.unwrap();
            Ok(())
        })
    }

    fn workspace_updates(
        self: Arc<Self>,
        request: WorkspaceUpdatesRequest,
        updates: Sink<WorkspaceUpdate>,
    ) -> BoxFuture<Result<(), Status>> {
        Box::pin(async move {
            updates
                .send(&update(&request.workspace_owner_id))
                .await
                .unwrap();
            Ok(())
        })
    }

    fn refresh_resume_token(
        self: Arc<Self>,
        _: RefreshResumeTokenRequest,
    ) -> BoxFuture<Result<RefreshResumeTokenResponse, Status>> {
        Box::pin(async { Ok(refresh()) })
    }
}

#[tokio::test]
async fn google_protobuf_peer_talks_to_our_server_byte_exact() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut requests) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let _ = serve_websocket(
            ws,
            Arc::new(tailnet::router(Arc::new(Fixed { requests: tx }))),
        )
        .await;
    });

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/tailnet_peer.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args(["127.0.0.1", &port.to_string()])
            .output()
    })
    .await
    .unwrap()
    .expect("python3 is needed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tailnet_peer.py failed (install with `pip install protobuf grpcio-tools`):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.splitn(3, ' ').collect()).collect();
    let replies = |name: &str| -> Vec<(String, String)> {
        lines
            .iter()
            .filter(|l| l[0] == name)
            .map(|l| (l[1].to_owned(), l[2].to_owned()))
            .collect()
    };
    let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let expect = [
        ("refresh", vec![hex(refresh().encode_to_vec())]),
        (
            "derp",
            vec![
                hex(derp_map().encode_to_vec()),
                hex(DerpMap::default().encode_to_vec()),
            ],
        ),
        (
            "update",
            vec![hex(update(&(0..16).collect::<Vec<u8>>()).encode_to_vec())],
        ),
        (
            "coordinate",
            vec![hex(coordinate_response().encode_to_vec())],
        ),
    ];
    for (name, want) in expect {
        let got = replies(name);
        assert_eq!(got.len(), want.len(), "{name}: {stdout}");
        for ((received, google), want) in got.iter().zip(&want) {
            assert_eq!(
                received, want,
                "{name}: received bytes differ from what we sent"
            );
            assert_eq!(
                google, want,
                "{name}: Google's re-encoding differs from prost's"
            );
        }
    }

    let (name, prost_bytes) = requests.recv().await.unwrap();
    assert_eq!(name, "coordinate");
    let sent = lines
        .iter()
        .find(|l| l[0] == "coordinate-request")
        .expect("the peer printed its request");
    assert_eq!(
        hex(prost_bytes),
        sent[1],
        "prost re-encodes Google's request differently"
    );

    let unknown = lines.iter().find(|l| l[0] == "unknown-rpc").unwrap();
    assert_eq!(unknown[1], "0");
    assert_eq!(
        unknown[2],
        r#"protocol error: unknown rpc: "/coder.tailnet.v2.Tailnet/PostTelemetry""#
    );
    assert!(stdout.ends_with("peer ok\n"), "{stdout}");
}
