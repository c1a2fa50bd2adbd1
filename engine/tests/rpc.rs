#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Tailnet dRPC client ⇄ server over yamux on an in-memory pipe.

use std::sync::Arc;

use codervpn_engine::session::BoxFuture;
use codervpn_engine::session::rpc::codec::{self, Id, Kind, PacketReader};
use codervpn_engine::session::rpc::server::serve_mux;
use codervpn_engine::session::rpc::tailnet::{self, paths};
use codervpn_engine::session::rpc::{
    CallError, MuxClient, Requests, Router, RpcClient, RpcError, Sink, Status, TailnetClient,
    TailnetService, is_unimplemented, mux,
};
use codervpn_proto::tailnet::{
    CoordinateRequest, CoordinateResponse, DerpMap, RefreshResumeTokenRequest,
    RefreshResumeTokenResponse, StreamDerpMapsRequest, Workspace, WorkspaceUpdate,
    WorkspaceUpdatesRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Answers every method; reports what happened to its calls on `seen`.
struct Service {
    seen: mpsc::UnboundedSender<String>,
}

impl TailnetService for Service {
    fn coordinate(
        self: Arc<Self>,
        mut requests: Requests<CoordinateRequest>,
        responses: Sink<CoordinateResponse>,
    ) -> BoxFuture<Result<(), Status>> {
        Box::pin(async move {
            loop {
                match requests.message().await {
                    Ok(Some(req)) => {
                        let echo = CoordinateResponse {
                            peer_updates: vec![],
                            error: format!("echo {}", req.tunnel_n()),
                        };
                        if responses.send(&echo).await.is_err() {
                            let _ = self.seen.send("coordinate: send failed".into());
                            return Ok(());
                        }
                    }
                    Ok(None) => {
                        let _ = self.seen.send("coordinate: close-send".into());
                        return Ok(());
                    }
                    Err(e) => {
                        let _ = self.seen.send(format!("coordinate: {e}"));
                        return Ok(());
                    }
                }
            }
        })
    }

    fn stream_derp_maps(
        self: Arc<Self>,
        _request: StreamDerpMapsRequest,
        maps: Sink<DerpMap>,
    ) -> BoxFuture<Result<(), Status>> {
        Box::pin(async move {
            for _ in 0..3 {
                maps.send(&DerpMap::default()).await.unwrap();
            }
            Ok(())
        })
    }

    fn workspace_updates(
        self: Arc<Self>,
        request: WorkspaceUpdatesRequest,
        updates: Sink<WorkspaceUpdate>,
    ) -> BoxFuture<Result<(), Status>> {
        Box::pin(async move {
            if request.workspace_owner_id.len() != 16 {
                return Err(Status::new(3, "workspace_owner_id must be 16 bytes"));
            }
            let update = WorkspaceUpdate {
                upserted_workspaces: vec![Workspace {
                    id: request.workspace_owner_id.clone(),
                    name: "ws".into(),
                    status: 3,
                }],
                ..Default::default()
            };
            updates.send(&update).await.unwrap();
            // Stay open until the client goes away.
            updates.closed().await;
            let _ = self.seen.send("workspace_updates: client gone".into());
            Ok(())
        })
    }

    fn refresh_resume_token(
        self: Arc<Self>,
        _request: RefreshResumeTokenRequest,
    ) -> BoxFuture<Result<RefreshResumeTokenResponse, Status>> {
        Box::pin(async {
            Ok(RefreshResumeTokenResponse {
                token: "fresh".into(),
                refresh_in: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                expires_at: None,
            })
        })
    }
}

trait TunnelN {
    fn tunnel_n(&self) -> String;
}

impl TunnelN for CoordinateRequest {
    fn tunnel_n(&self) -> String {
        self.add_tunnel
            .as_ref()
            .map(|t| String::from_utf8_lossy(&t.id).into_owned())
            .unwrap_or_default()
    }
}

fn request(n: usize) -> CoordinateRequest {
    CoordinateRequest {
        add_tunnel: Some(codervpn_proto::tailnet::coordinate_request::Tunnel {
            id: n.to_string().into_bytes(),
        }),
        ..Default::default()
    }
}

/// A client session connected to `router` over an in-memory pipe.
fn connect(router: Router) -> RpcClient {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let router = Arc::new(router);
    tokio::spawn(async move {
        let _ = serve_mux(server_io, router).await;
    });
    RpcClient::new(MuxClient::start(client_io))
}

fn tailnet_pair() -> (TailnetClient, mpsc::UnboundedReceiver<String>) {
    let (seen, seen_rx) = mpsc::unbounded_channel();
    let rpc = connect(tailnet::router(Arc::new(Service { seen })));
    (TailnetClient::new(rpc), seen_rx)
}

#[tokio::test]
async fn unary_call_returns_the_servers_reply() {
    let (client, _) = tailnet_pair();
    let reply = client.refresh_resume_token().await.unwrap();
    assert_eq!(reply.token, "fresh");
    assert_eq!(reply.refresh_in.unwrap().seconds, 60);
}

#[tokio::test]
async fn server_stream_delivers_every_message_then_ends() {
    let (client, _) = tailnet_pair();
    let mut maps = client.stream_derp_maps().await.unwrap();
    for _ in 0..3 {
        assert!(maps.message().await.unwrap().is_some());
    }
    assert!(maps.message().await.unwrap().is_none());
    assert!(maps.message().await.unwrap().is_none());
}

#[tokio::test]
async fn server_stream_handler_sees_the_client_go_away() {
    let (client, mut seen) = tailnet_pair();
    let mut updates = client.workspace_updates(&[7; 16]).await.unwrap();
    let first = updates.message().await.unwrap().unwrap();
    assert_eq!(first.upserted_workspaces[0].id, [7; 16]);
    drop(updates);
    assert_eq!(seen.recv().await.unwrap(), "workspace_updates: client gone");
}

#[tokio::test]
async fn handler_error_reaches_the_client_with_code_and_text() {
    let (client, _) = tailnet_pair();
    let mut updates = client.workspace_updates(&[1, 2]).await.unwrap();
    let err = updates.message().await.unwrap_err();
    match &err {
        RpcError::Remote { path, code, text } => {
            assert_eq!(path, paths::WORKSPACE_UPDATES);
            assert_eq!(*code, 3);
            assert_eq!(text, "workspace_owner_id must be 16 bytes");
        }
        other => panic!("want a remote error, got {other:?}"),
    }
    assert!(!is_unimplemented(&err));
}

#[tokio::test]
async fn bidi_stream_carries_messages_both_ways_until_close_send() {
    let (client, mut seen) = tailnet_pair();
    let mut stream = client.coordinate().await.unwrap();
    for n in 0..5 {
        stream.send(&request(n)).await.unwrap();
    }
    for n in 0..5 {
        let resp = stream.message().await.unwrap().unwrap();
        assert_eq!(resp.error, format!("echo {n}"));
    }
    stream.close_send().await.unwrap();
    assert!(stream.message().await.unwrap().is_none());
    assert_eq!(seen.recv().await.unwrap(), "coordinate: close-send");
}

#[tokio::test]
async fn bidi_halves_work_from_different_tasks() {
    let (client, _) = tailnet_pair();
    let (tx, mut rx) = client.coordinate().await.unwrap().split();
    let sender = tokio::spawn(async move {
        for n in 0..50 {
            tx.send(&request(n)).await.unwrap();
        }
        // Dropping the sender sends close-send.
    });
    let mut got = 0;
    while let Some(resp) = rx.message().await.unwrap() {
        assert_eq!(resp.error, format!("echo {got}"));
        got += 1;
    }
    assert_eq!(got, 50);
    sender.await.unwrap();
}

#[tokio::test]
async fn cancelling_a_bidi_call_reaches_the_handler() {
    let (client, mut seen) = tailnet_pair();
    let mut stream = client.coordinate().await.unwrap();
    stream.send(&request(1)).await.unwrap();
    stream.message().await.unwrap().unwrap();
    stream.cancel().await;
    assert_eq!(
        seen.recv().await.unwrap(),
        format!(
            "coordinate: {}: the peer cancelled the call",
            paths::COORDINATE
        )
    );
}

#[tokio::test]
async fn closing_a_bidi_call_reaches_the_handler() {
    let (client, mut seen) = tailnet_pair();
    let stream = client.coordinate().await.unwrap();
    stream.close().await;
    let got = seen.recv().await.unwrap();
    assert!(got.contains("the peer closed the call"), "{got}");
}

#[tokio::test]
async fn unknown_method_gets_drpcmuxs_error() {
    let (client, _) = tailnet_pair();
    let err = client
        .rpc()
        .unary::<_, RefreshResumeTokenResponse>(
            paths::POST_TELEMETRY,
            &RefreshResumeTokenRequest {},
        )
        .await
        .unwrap_err();
    match &err {
        RpcError::Remote { code, text, .. } => {
            assert_eq!(*code, 0);
            assert_eq!(
                text,
                r#"protocol error: unknown rpc: "/coder.tailnet.v2.Tailnet/PostTelemetry""#
            );
        }
        other => panic!("want a remote error, got {other:?}"),
    }
    assert!(is_unimplemented(&err));
}

#[tokio::test]
async fn unimplemented_method_answers_code_12() {
    struct Bare;
    impl TailnetService for Bare {}
    let client = TailnetClient::new(connect(tailnet::router(Arc::new(Bare))));
    let err = client.refresh_resume_token().await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote { code: 12, text, .. } if text == "Unimplemented"),
        "{err:?}"
    );
    assert!(is_unimplemented(&err));
    let mut maps = client.stream_derp_maps().await.unwrap();
    assert!(is_unimplemented(&maps.message().await.unwrap_err()));
}

#[tokio::test]
async fn concurrent_calls_each_get_their_own_stream() {
    let (client, _) = tailnet_pair();
    let calls = (0..40).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.refresh_resume_token().await.unwrap().token })
    });
    for call in calls {
        assert_eq!(call.await.unwrap(), "fresh");
    }
}

/// Sends `bytes` on a fresh yamux stream of a session served by the tailnet router and
/// returns everything the server wrote back before closing the stream.
async fn raw_exchange(bytes: &[u8]) -> Vec<u8> {
    let (client, _) = tailnet_pair();
    let mut stream = client.rpc().mux().open().await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    back
}

fn packets(bytes: &[u8]) -> Vec<codec::Packet> {
    let mut r = PacketReader::new();
    r.push(bytes);
    std::iter::from_fn(|| r.next_packet().unwrap()).collect()
}

#[tokio::test]
async fn malformed_frame_gets_a_protocol_error_and_a_closed_stream() {
    let mut wire = Vec::new();
    codec::put_packet(
        &mut wire,
        Id::new(1, 1),
        Kind::Invoke,
        false,
        paths::COORDINATE.as_bytes(),
    );
    // A stream id varint that never ends.
    wire.push(0x05);
    wire.extend([0x80; 11]);
    let back = raw_exchange(&wire).await;
    let got = packets(&back);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, Kind::Error);
    let (code, text) = codec::parse_error_data(&got[0].data);
    assert_eq!(code, 0);
    assert_eq!(
        text,
        "protocol error: stream id varint is longer than 10 bytes"
    );
}

#[tokio::test]
async fn unknown_kind_without_control_bit_closes_the_call() {
    let mut wire = Vec::new();
    codec::put_packet(
        &mut wire,
        Id::new(1, 1),
        Kind::Invoke,
        false,
        paths::COORDINATE.as_bytes(),
    );
    codec::put_packet(
        &mut wire,
        Id::new(1, 2),
        Kind::Unknown(33),
        true,
        b"ignored",
    );
    codec::put_packet(
        &mut wire,
        Id::new(1, 3),
        Kind::Unknown(33),
        false,
        b"refused",
    );
    let got = packets(&raw_exchange(&wire).await);
    let (_, text) = codec::parse_error_data(&got.last().unwrap().data);
    assert_eq!(
        text,
        "protocol error: unknown kind 33 packet (stream 1, message 3) is not valid on a running call"
    );
}

#[tokio::test]
async fn oversize_request_is_refused_by_the_server() {
    let big = Router::new().unary("/t/Big", |req: RefreshResumeTokenResponse| async move {
        Ok::<_, Status>(RefreshResumeTokenResponse {
            token: req.token.len().to_string(),
            ..Default::default()
        })
    });
    let client = connect(big);
    let req = RefreshResumeTokenResponse {
        token: "x".repeat(codec::MAX_PACKET_SIZE + 1),
        ..Default::default()
    };
    let err = client
        .unary::<_, RefreshResumeTokenResponse>("/t/Big", &req)
        .await
        .unwrap_err();
    let RpcError::Remote { code: 0, text, .. } = &err else {
        panic!("want a remote error, got {err:?}");
    };
    assert!(
        text.starts_with("protocol error: packet (stream 1, message 2)"),
        "{text}"
    );
    assert!(text.ends_with("over the 4194304-byte limit"), "{text}");

    // Just under the limit is fine.
    let req = RefreshResumeTokenResponse {
        token: "x".repeat(codec::MAX_PACKET_SIZE - 8),
        ..Default::default()
    };
    let reply: RefreshResumeTokenResponse = client.unary("/t/Big", &req).await.unwrap();
    assert_eq!(reply.token, (codec::MAX_PACKET_SIZE - 8).to_string());
}

#[tokio::test]
async fn oversize_reply_is_refused_by_the_client() {
    let big = Router::new().unary("/t/Big", |_: RefreshResumeTokenRequest| async move {
        Ok::<_, Status>(RefreshResumeTokenResponse {
            token: "y".repeat(codec::MAX_PACKET_SIZE),
            ..Default::default()
        })
    });
    let err = connect(big)
        .unary::<_, RefreshResumeTokenResponse>("/t/Big", &RefreshResumeTokenRequest {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            RpcError::Protocol {
                source: CallError::Codec(codec::CodecError::PacketTooLarge { .. }),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn malformed_reply_is_a_protocol_error_for_the_client() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let _ = mux::serve(server_io, |mut stream| {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                // Message id 0 is below the first acceptable id (1, 1).
                let mut wire = Vec::new();
                codec::put_packet(&mut wire, Id::new(1, 0), Kind::Message, false, b"");
                let _ = stream.write_all(&wire).await;
                let _ = stream.shutdown().await;
            });
        })
        .await;
    });
    let client = TailnetClient::new(RpcClient::new(MuxClient::start(client_io)));
    let err = client.refresh_resume_token().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "/coder.tailnet.v2.Tailnet/RefreshResumeToken: frame (stream 1, message 0) is below the \
         next acceptable id (stream 1, message 1): ids must not go backwards"
    );
}

#[tokio::test]
async fn server_closing_without_reply_is_no_reply() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let _ = mux::serve(server_io, |mut stream| {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let mut wire = Vec::new();
                codec::put_packet(&mut wire, Id::new(1, 1), Kind::CloseSend, false, b"");
                let _ = stream.write_all(&wire).await;
                let _ = stream.shutdown().await;
            });
        })
        .await;
    });
    let client = TailnetClient::new(RpcClient::new(MuxClient::start(client_io)));
    let err = client.refresh_resume_token().await.unwrap_err();
    assert!(matches!(err, RpcError::NoReply { .. }), "{err:?}");
}

#[tokio::test]
async fn session_end_fails_new_calls_with_a_clear_error() {
    let (client, _) = tailnet_pair();
    client.refresh_resume_token().await.unwrap();
    client.close().await;
    let err = client.refresh_resume_token().await.unwrap_err();
    assert!(matches!(err, RpcError::Open { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "/coder.tailnet.v2.Tailnet/RefreshResumeToken: cannot open a yamux stream: the yamux \
         session is closed"
    );
}
