//! The protocol-layer cases of the conformance checklist (codervpn-protocol.md §10), run
//! over real Unix socket pairs against a raw peer that writes and reads bytes by hand, and
//! between two `Connection`s (both roles).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use codervpn_proto::frame::{FrameDecoder, MAX_FRAME_LEN, decode_message, encode_frame};
use codervpn_proto::vpn::{self, ManagerMessage, TunnelMessage, manager_message, tunnel_message};
use codervpn_proto::{
    CloseReason, Connection, HandshakeError, Incoming, ManagerSide, RpcError, TunnelSide,
    VersionList,
};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

const T: Duration = Duration::from_secs(10);

/// A tunnel-side connection handshaken with a raw peer that announced `header`.
async fn tunnel_with_raw_peer(header: &str) -> (Connection<TunnelSide>, UnixStream) {
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let (r, w) = ours.into_split();
    peer.write_all(header.as_bytes()).await.unwrap();
    let conn = Connection::<TunnelSide>::handshake(r, w, VersionList::current())
        .await
        .unwrap();
    let mut line = vec![0u8; "codervpn tunnel 1.3\n".len()];
    peer.read_exact(&mut line).await.unwrap();
    assert_eq!(line, b"codervpn tunnel 1.3\n");
    (conn, peer)
}

/// A manager-side connection handshaken with a raw peer that announced `header` (the
/// peer's copy of our header is left unread).
async fn manager_with_raw_peer(header: &str) -> (Connection<ManagerSide>, UnixStream) {
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let (r, w) = ours.into_split();
    peer.write_all(header.as_bytes()).await.unwrap();
    let conn = Connection::<ManagerSide>::handshake(r, w, VersionList::current())
        .await
        .unwrap();
    (conn, peer)
}

/// Two connected `Connection`s, manager and tunnel.
async fn pair() -> (Connection<ManagerSide>, Connection<TunnelSide>) {
    let (a, b) = UnixStream::pair().unwrap();
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let (m, t) = tokio::join!(
        Connection::<ManagerSide>::handshake(ar, aw, VersionList::current()),
        Connection::<TunnelSide>::handshake(br, bw, VersionList::current()),
    );
    (m.unwrap(), t.unwrap())
}

async fn read_frame<M: Message + Default>(peer: &mut UnixStream) -> Option<M> {
    let mut len = [0u8; 4];
    if peer.read_exact(&mut len).await.is_err() {
        return None;
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    peer.read_exact(&mut body).await.unwrap();
    Some(M::decode(&body[..]).unwrap())
}

async fn write_frame<M: Message>(peer: &mut UnixStream, msg: &M) {
    let mut buf = BytesMut::new();
    encode_frame(msg, "test", &mut buf).unwrap();
    peer.write_all(&buf).await.unwrap();
}

async fn assert_eof(peer: &mut UnixStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(T, peer.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
}

fn log_msg(text: &str) -> TunnelMessage {
    TunnelMessage {
        rpc: None,
        msg: Some(tunnel_message::Msg::Log(vpn::Log {
            message: text.into(),
            ..Default::default()
        })),
    }
}

fn get_peer_update() -> ManagerMessage {
    ManagerMessage {
        rpc: None,
        msg: Some(manager_message::Msg::GetPeerUpdate(vpn::GetPeerUpdate {})),
    }
}

// checklist #1, #2, #3 (TestSpeaker_RawPeer)
#[tokio::test]
async fn raw_peer_handshake_then_frame_then_eof() {
    let (conn, mut peer) = tunnel_with_raw_peer("codervpn manager 1.3,2.1\n").await;
    assert_eq!(conn.negotiated().to_string(), "1.3");
    conn.handle().notify(log_msg("hello")).await.unwrap();
    let got: TunnelMessage = read_frame(&mut peer).await.unwrap();
    assert_eq!(got, log_msg("hello"));
    conn.handle().close();
    assert_eof(&mut peer).await;
}

#[tokio::test]
async fn go_tunnel_advertising_1_1_negotiates_1_1_on_the_manager_side() {
    let (conn, _peer) = manager_with_raw_peer("codervpn tunnel 1.1\n").await;
    assert_eq!(conn.negotiated().to_string(), "1.1");
}

// checklist #4 (TestSpeaker_HandshakeRWFailure)
#[tokio::test]
async fn handshake_on_closed_stream_fails() {
    let (ours, peer) = UnixStream::pair().unwrap();
    drop(peer);
    let (r, w) = ours.into_split();
    let err = Connection::<TunnelSide>::handshake(r, w, VersionList::current())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("handshake failed"), "{err}");
}

// checklist #5 (TestSpeaker_HandshakeCtxDone)
#[tokio::test]
async fn cancelled_handshake_fails() {
    let (ours, _peer) = UnixStream::pair().unwrap();
    let (r, w) = ours.into_split();
    let cancel = tokio::time::sleep(Duration::from_millis(20));
    let err = Connection::<TunnelSide>::handshake_until(r, w, VersionList::current(), cancel)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, HandshakeError::Cancelled));
    assert!(err.to_string().contains("handshake failed"), "{err}");
}

/// Counts the bytes a reader handed out.
struct Counting<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.count.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        r
    }
}

// checklist #6, #19 (TestSpeaker_OversizeHandshake)
#[tokio::test]
async fn oversize_header_stops_after_256_bytes() {
    let (ours, mut peer) = tokio::io::duplex(4096);
    let (r, w) = tokio::io::split(ours);
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = Counting {
        inner: r,
        count: count.clone(),
    };
    peer.write_all(&[b'a'; 768]).await.unwrap();
    let err = Connection::<TunnelSide>::handshake(r, w, VersionList::current())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("handshake failed"), "{err}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 256);
    let mut rest = Vec::new();
    tokio::time::timeout(T, peer.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rest, b"codervpn tunnel 1.3\n",
        "our header was written, then the stream closed"
    );
}

// checklist #7–#12 (TestSpeaker_HandshakeInvalid), tunnel role
#[tokio::test]
async fn invalid_manager_headers_fail_validation() {
    let cases = [
        ("ssh manager 1.1\n", "invalid preamble"),
        ("ssh manager\n", "wrong number of parts"),
        ("codervpn manager 2.0,3.0\n", "not compatible"),
        ("codervpn 0.1 manager\n", "unexpected role"),
        ("codervpn 1.1 supervisor\n", "unexpected role"),
        ("codervpn 1.1 tunnel\n", "unexpected role"),
    ];
    for (header, want) in cases {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (r, w) = ours.into_split();
        peer.write_all(header.as_bytes()).await.unwrap();
        let err = Connection::<TunnelSide>::handshake(r, w, VersionList::current())
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.starts_with("validate header ("), "{header:?}: {text}");
        assert!(text.contains(want), "{header:?}: {text}");
        assert_eof_after_header(&mut peer).await;
    }
}

async fn assert_eof_after_header(peer: &mut UnixStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(T, peer.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, b"codervpn tunnel 1.3\n");
}

// manager role: a tunnel announcing the wrong role or no common major is refused
#[tokio::test]
async fn invalid_tunnel_headers_fail_validation_on_the_manager_side() {
    for (header, want) in [
        ("codervpn manager 1.3\n", "unexpected role"),
        ("codervpn tunnel 2.0\n", "not compatible"),
    ] {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (r, w) = ours.into_split();
        peer.write_all(header.as_bytes()).await.unwrap();
        let err = Connection::<ManagerSide>::handshake(r, w, VersionList::current())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[tokio::test]
async fn header_is_read_byte_at_a_time_leaving_the_first_frame_intact() {
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let (r, w) = ours.into_split();
    let mut bytes = b"codervpn manager 1.3\n".to_vec();
    let mut frame = BytesMut::new();
    encode_frame(&get_peer_update_request(4), "ManagerMessage", &mut frame).unwrap();
    bytes.extend_from_slice(&frame);
    peer.write_all(&bytes).await.unwrap();
    let mut conn = Connection::<TunnelSide>::handshake(r, w, VersionList::current())
        .await
        .unwrap();
    let Some(Incoming::Request { id: 4, .. }) = conn.next_incoming().await else {
        panic!("first frame lost");
    };
}

fn get_peer_update_request(id: u64) -> ManagerMessage {
    ManagerMessage {
        rpc: Some(vpn::Rpc {
            msg_id: id,
            response_to: 0,
        }),
        ..get_peer_update()
    }
}

/// Sends `bytes` after the handshake; the connection must close with an error containing
/// `want`, dispatch nothing, and the peer must read EOF.
async fn assert_bad_input_closes(bytes: &[u8], want: &str) {
    let (mut conn, mut peer) = tunnel_with_raw_peer("codervpn manager 1.3\n").await;
    peer.write_all(bytes).await.unwrap();
    assert!(
        conn.next_incoming().await.is_none(),
        "nothing is dispatched"
    );
    let CloseReason::Error(e) = conn.handle().closed().await else {
        panic!("wrong reason")
    };
    assert!(e.contains(want), "{e}");
    assert_eof(&mut peer).await;
}

// checklist #20 (TestSpeaker_CorruptMessage)
#[tokio::test]
async fn corrupt_frame_closes_the_connection() {
    let mut corrupt = vec![0, 0, 0, 10];
    corrupt.extend_from_slice(&[0u8; 10]);
    assert_bad_input_closes(&corrupt, "failed to unmarshal").await;
}

// checklist #21
#[tokio::test]
async fn oversize_frame_closes_the_connection_and_dispatches_nothing() {
    assert_bad_input_closes(&0x0100_0001u32.to_be_bytes(), "exceeds max").await;
}

// checklist #22
#[tokio::test]
async fn oversize_send_fails_locally_and_writes_nothing() {
    let (conn, mut peer) = tunnel_with_raw_peer("codervpn manager 1.3\n").await;
    let err = conn
        .handle()
        .notify(log_msg(&"x".repeat(MAX_FRAME_LEN)))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Frame(_)), "{err}");
    conn.handle().notify(log_msg("after")).await.unwrap();
    let got: TunnelMessage = read_frame(&mut peer).await.unwrap();
    assert_eq!(
        got,
        log_msg("after"),
        "nothing was written before the next frame"
    );
}

#[tokio::test]
async fn frame_of_exactly_16_mib_is_received() {
    let (mut tunnel, mut peer) = tunnel_with_raw_peer("codervpn manager 1.3\n").await;
    // A ManagerMessage whose encoding is exactly MAX_FRAME_LEN bytes: an unknown field
    // (number 15, length-delimited) padded to size.
    let header_len = 1 + prost::encoding::encoded_len_varint((MAX_FRAME_LEN - 5) as u64);
    let pad = MAX_FRAME_LEN - header_len;
    let mut body = vec![(15 << 3) | 2];
    prost::encoding::encode_varint(pad as u64, &mut body);
    body.resize(MAX_FRAME_LEN, b'p');
    let mut wire = (MAX_FRAME_LEN as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&body);
    let writer = tokio::spawn(async move {
        peer.write_all(&wire).await.unwrap();
        peer
    });
    let Some(Incoming::OneWay(msg)) = tunnel.next_incoming().await else {
        panic!("not received")
    };
    assert_eq!(msg, ManagerMessage::default(), "unknown fields are ignored");
    drop(writer.await.unwrap());
}

// checklist #23
#[tokio::test]
async fn zero_length_frame_is_an_empty_message_and_the_connection_stays_open() {
    let (mut conn, mut peer) = tunnel_with_raw_peer("codervpn manager 1.3\n").await;
    peer.write_all(&[0, 0, 0, 0]).await.unwrap();
    let Some(Incoming::OneWay(msg)) = conn.next_incoming().await else {
        panic!("not one-way")
    };
    assert_eq!(msg, ManagerMessage::default());
    write_frame(&mut peer, &get_peer_update_request(2)).await;
    assert!(matches!(
        conn.next_incoming().await,
        Some(Incoming::Request { id: 2, .. })
    ));
}

// checklist #25
#[tokio::test]
async fn eof_inside_a_length_prefix_closes_and_fails_pending_requests() {
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let (r, w) = ours.into_split();
    peer.write_all(b"codervpn tunnel 1.3\n").await.unwrap();
    let conn = Connection::<ManagerSide>::handshake(r, w, VersionList::current())
        .await
        .unwrap();
    let h = conn.handle().clone();
    let pending = tokio::spawn(async move { h.request(get_peer_update()).await });
    let mut skip = vec![0u8; 21];
    peer.read_exact(&mut skip).await.unwrap();
    let _request: ManagerMessage = read_frame(&mut peer).await.unwrap();
    peer.write_all(&[0, 0]).await.unwrap();
    drop(peer);
    let err = tokio::time::timeout(T, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("stream ended inside a frame"),
        "{err}"
    );
}

// checklist #24: every message type survives the trip in both directions
#[tokio::test]
async fn every_message_type_round_trips() {
    let (mut manager, mut tunnel) = pair().await;
    let start = vpn::StartRequest {
        tunnel_file_descriptor: 7,
        coder_url: "https://coder.example.com".into(),
        api_token: "token".into(),
        headers: vec![vpn::start_request::Header {
            name: "a".into(),
            value: "b".into(),
        }],
        device_id: "d".into(),
        device_os: "Linux".into(),
        coder_desktop_version: "0.1".into(),
    };
    let manager_msgs = [
        manager_message::Msg::GetPeerUpdate(vpn::GetPeerUpdate {}),
        manager_message::Msg::NetworkSettings(vpn::NetworkSettingsResponse {
            success: false,
            error_message: "x".into(),
        }),
        manager_message::Msg::Start(start),
        manager_message::Msg::Stop(vpn::StopRequest {}),
        manager_message::Msg::Wake(vpn::WakeRequest {}),
    ];
    for m in manager_msgs {
        let sent = ManagerMessage {
            rpc: None,
            msg: Some(m),
        };
        manager.handle().notify(sent.clone()).await.unwrap();
        let Some(Incoming::OneWay(got)) = tunnel.next_incoming().await else {
            panic!()
        };
        assert_eq!(got, sent);
    }
    let settings = vpn::NetworkSettingsRequest {
        mtu: 1280,
        ipv6_settings: Some(vpn::network_settings_request::IPv6Settings {
            addrs: vec!["fd60:627a:a42b::1".into()],
            prefix_lengths: vec![128],
            included_routes: vec![vpn::network_settings_request::i_pv6_settings::IPv6Route {
                destination: "fd60:627a:a42b::".into(),
                prefix_length: 48,
                router: String::new(),
            }],
            excluded_routes: vec![],
        }),
        ..Default::default()
    };
    let update = vpn::PeerUpdate {
        upserted_agents: vec![vpn::Agent {
            id: vec![1; 16],
            name: "a".into(),
            workspace_id: vec![2; 16],
            fqdn: vec!["a.w.me.coder.".into()],
            ip_addrs: vec!["fd60:627a:a42b:101::".into()],
            last_handshake: Some(prost_types::Timestamp {
                seconds: -62135596800,
                nanos: 0,
            }),
            last_ping: Some(vpn::LastPing {
                latency: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 100_000_000,
                }),
                did_p2p: true,
                preferred_derp: "Coder Region".into(),
                preferred_derp_latency: None,
            }),
        }],
        ..Default::default()
    };
    let tunnel_msgs = [
        tunnel_message::Msg::Log(vpn::Log {
            level: vpn::log::Level::Critical as i32,
            message: "m".into(),
            logger_names: vec!["vpn".into()],
            fields: vec![vpn::log::Field {
                name: "k".into(),
                value: "v".into(),
            }],
        }),
        tunnel_message::Msg::PeerUpdate(update),
        tunnel_message::Msg::NetworkSettings(settings),
        tunnel_message::Msg::Start(vpn::StartResponse {
            success: true,
            error_message: String::new(),
        }),
        tunnel_message::Msg::Stop(vpn::StopResponse {
            success: false,
            error_message: "e".into(),
        }),
        tunnel_message::Msg::Wake(vpn::WakeResponse {}),
    ];
    for m in tunnel_msgs {
        let sent = TunnelMessage {
            rpc: None,
            msg: Some(m),
        };
        tunnel.handle().notify(sent.clone()).await.unwrap();
        let Some(Incoming::OneWay(got)) = manager.next_incoming().await else {
            panic!()
        };
        assert_eq!(got, sent);
    }
}

// checklist #26 (TestSpeaker_unaryRPC_mainline), in both directions
#[tokio::test]
async fn request_gets_the_reply_with_matching_response_to() {
    let (mut manager, mut tunnel) = pair().await;
    let th = tunnel.handle().clone();
    let responder = tokio::spawn(async move {
        let Some(Incoming::Request { id, msg }) = tunnel.next_incoming().await else {
            panic!()
        };
        assert!(matches!(
            msg.msg,
            Some(manager_message::Msg::GetPeerUpdate(_))
        ));
        assert_eq!(id, 1, "ids start at 1");
        th.reply(
            id,
            TunnelMessage {
                rpc: None,
                msg: Some(tunnel_message::Msg::PeerUpdate(Default::default())),
            },
        )
        .await
        .unwrap();
        // and the tunnel asks the manager something
        let reply = th
            .request(TunnelMessage {
                rpc: None,
                msg: Some(tunnel_message::Msg::NetworkSettings(Default::default())),
            })
            .await
            .unwrap();
        assert_eq!(
            reply.rpc.unwrap().response_to,
            1,
            "the tunnel's own counter starts at 1"
        );
        tunnel
    });
    let reply = manager.handle().request(get_peer_update()).await.unwrap();
    assert_eq!(
        reply.rpc,
        Some(vpn::Rpc {
            msg_id: 0,
            response_to: 1
        })
    );
    let Some(Incoming::Request { id, .. }) = manager.next_incoming().await else {
        panic!()
    };
    manager
        .handle()
        .reply(
            id,
            ManagerMessage {
                rpc: None,
                msg: Some(manager_message::Msg::NetworkSettings(
                    vpn::NetworkSettingsResponse {
                        success: true,
                        ..Default::default()
                    },
                )),
            },
        )
        .await
        .unwrap();
    let mut tunnel = responder.await.unwrap();
    manager.handle().close();
    assert!(
        tunnel.next_incoming().await.is_none(),
        "closing one side ends the other's stream"
    );
}

// checklist #27 (TestSpeaker_unaryRPC_canceled)
#[tokio::test]
async fn cancelled_request_drops_the_late_reply() {
    let (manager, mut tunnel) = pair().await;
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        manager.handle().request(get_peer_update()),
    )
    .await;
    assert!(cancelled.is_err(), "no reply yet, so the caller gave up");
    let Some(Incoming::Request { id, .. }) = tunnel.next_incoming().await else {
        panic!()
    };
    let late = TunnelMessage {
        rpc: None,
        msg: Some(tunnel_message::Msg::PeerUpdate(Default::default())),
    };
    tunnel.handle().reply(id, late.clone()).await.unwrap();
    // The connection still works afterwards.
    let th = tunnel.handle().clone();
    let responder = tokio::spawn(async move {
        let Some(Incoming::Request { id, .. }) = tunnel.next_incoming().await else {
            panic!()
        };
        th.reply(id, late).await.unwrap();
    });
    let reply = manager.handle().request(get_peer_update()).await.unwrap();
    assert_eq!(reply.rpc.unwrap().response_to, 2);
    responder.await.unwrap();
    assert_eq!(manager.handle().requests_in_flight(), 0);
}

/// A caller that gives up on request after request leaves nothing behind, even while
/// nobody reads the incoming queue (the reader is then parked on it, reading nothing).
#[tokio::test]
async fn cancelled_requests_leave_nothing_behind_while_incoming_is_full() {
    let (conn, mut peer) = manager_with_raw_peer("codervpn tunnel 1.3\n").await;
    for _ in 0..200 {
        write_frame(&mut peer, &log_msg("flood")).await;
    }
    // Drain what the requests write, so the writer never blocks.
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while peer.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    let h = conn.handle().clone();
    for _ in 0..2_000 {
        let r = tokio::time::timeout(Duration::ZERO, h.request(get_peer_update())).await;
        assert!(r.is_err(), "no reply can come");
    }
    assert_eq!(
        h.requests_in_flight(),
        0,
        "every cancelled request unregistered"
    );
    drain.abort();
}

// checklist #28 (TestSpeaker_unaryRPC_hung_up, …_sendLoop)
#[tokio::test]
async fn hang_up_fails_pending_and_later_requests_with_unexpected_eof() {
    let (manager, mut tunnel) = pair().await;
    let h = manager.handle().clone();
    let pending = tokio::spawn(async move { h.request(get_peer_update()).await });
    assert!(tunnel.next_incoming().await.is_some());
    drop(tunnel);
    let err = tokio::time::timeout(T, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.to_string(), "connection closed: unexpected EOF");
    let err = manager
        .handle()
        .request(get_peer_update())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "connection closed: unexpected EOF");
    assert_eq!(manager.handle().requests_in_flight(), 0);
}

// checklist #29, #31 on the wire
#[tokio::test]
async fn reply_sets_only_response_to_and_one_way_has_no_rpc() {
    let (mut conn, mut peer) = tunnel_with_raw_peer("codervpn manager 1.3\n").await;
    write_frame(&mut peer, &get_peer_update_request(33)).await;
    let Some(Incoming::Request { id, .. }) = conn.next_incoming().await else {
        panic!()
    };
    conn.handle()
        .reply(
            id,
            TunnelMessage {
                rpc: None,
                msg: Some(tunnel_message::Msg::PeerUpdate(Default::default())),
            },
        )
        .await
        .unwrap();
    let reply: TunnelMessage = read_frame(&mut peer).await.unwrap();
    assert_eq!(
        reply.rpc,
        Some(vpn::Rpc {
            msg_id: 0,
            response_to: 33
        })
    );
    // a one-way message whose caller set an rpc still goes out without one
    let mut one_way = log_msg("x");
    one_way.rpc = Some(vpn::Rpc {
        msg_id: 9,
        response_to: 9,
    });
    conn.handle().notify(one_way).await.unwrap();
    let mut len = [0u8; 4];
    peer.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    peer.read_exact(&mut body).await.unwrap();
    assert_ne!(body[0], 0x0a, "field 1 (rpc) must be absent, not empty");
    assert_eq!(TunnelMessage::decode(&body[..]).unwrap().rpc, None);
}

// checklist #30 (SpeakerTests sendRPCs)
#[tokio::test]
async fn concurrent_requests_answered_in_reverse_order_reach_their_callers() {
    let (manager, mut tunnel) = pair().await;
    let (h1, h2) = (manager.handle().clone(), manager.handle().clone());
    let first = tokio::spawn(async move { h1.request(get_peer_update()).await });
    let Some(Incoming::Request { id: id1, .. }) = tunnel.next_incoming().await else {
        panic!()
    };
    let second = tokio::spawn(async move { h2.request(get_peer_update()).await });
    let Some(Incoming::Request { id: id2, .. }) = tunnel.next_incoming().await else {
        panic!()
    };
    for (id, name) in [(id2, "second"), (id1, "first")] {
        let msg = TunnelMessage {
            rpc: None,
            msg: Some(tunnel_message::Msg::Stop(vpn::StopResponse {
                success: true,
                error_message: name.into(),
            })),
        };
        tunnel.handle().reply(id, msg).await.unwrap();
    }
    let text = |m: TunnelMessage| match m.msg {
        Some(tunnel_message::Msg::Stop(s)) => s.error_message,
        _ => panic!(),
    };
    assert_eq!(text(first.await.unwrap().unwrap()), "first");
    assert_eq!(text(second.await.unwrap().unwrap()), "second");
}

#[tokio::test]
async fn reply_to_nothing_pending_and_empty_rpc_are_dropped() {
    let (mut conn, mut peer) = tunnel_with_raw_peer("codervpn manager 1.3\n").await;
    let stray = ManagerMessage {
        rpc: Some(vpn::Rpc {
            msg_id: 0,
            response_to: 77,
        }),
        ..get_peer_update()
    };
    write_frame(&mut peer, &stray).await;
    let empty_rpc = ManagerMessage {
        rpc: Some(vpn::Rpc::default()),
        ..get_peer_update()
    };
    write_frame(&mut peer, &empty_rpc).await;
    write_frame(&mut peer, &get_peer_update_request(5)).await;
    let Some(Incoming::Request { id: 5, .. }) = conn.next_incoming().await else {
        panic!("the stray reply or the empty rpc was dispatched");
    };
}

// checklist #42 (TestSerdes_StopClosesAfterResponse): nothing follows the final frame
#[tokio::test]
async fn final_frame_is_last_and_queued_frames_are_discarded() {
    let (conn, mut peer) = tunnel_with_raw_peer("codervpn manager 1.3\n").await;
    // Fill the socket so that the writer blocks, then queue logs behind it.
    let big = log_msg(&"y".repeat(512 * 1024));
    let h = conn.handle().clone();
    h.notify(big).await.unwrap();
    for i in 0..50 {
        h.try_notify(log_msg(&format!("queued {i}"))).unwrap();
    }
    let stop = TunnelMessage {
        rpc: None,
        msg: Some(tunnel_message::Msg::Stop(vpn::StopResponse {
            success: true,
            error_message: String::new(),
        })),
    };
    let fin = tokio::spawn(async move { h.send_final(1, stop).await });
    let mut frames = Vec::new();
    while let Some(m) = read_frame::<TunnelMessage>(&mut peer).await {
        frames.push(m);
    }
    fin.await.unwrap().unwrap();
    let last = frames.last().unwrap();
    assert!(
        matches!(last.msg, Some(tunnel_message::Msg::Stop(_))),
        "StopResponse is the final frame"
    );
    assert_eq!(
        last.rpc,
        Some(vpn::Rpc {
            msg_id: 0,
            response_to: 1
        })
    );
    assert!(
        frames.len() < 52,
        "queued logs were discarded, got {} frames",
        frames.len()
    );
    assert!(
        conn.handle().notify(log_msg("late")).await.is_err(),
        "nothing can be sent after the final frame"
    );
}

#[tokio::test]
async fn frames_from_many_senders_never_interleave() {
    let (mut manager, tunnel) = pair().await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let h = tunnel.handle().clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                h.notify(log_msg(&format!("{t}-{i}-{}", "z".repeat(3000))))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for _ in 0..400 {
        assert!(matches!(
            manager.next_incoming().await,
            Some(Incoming::OneWay(_))
        ));
    }
}

#[tokio::test]
async fn decoder_and_connection_agree_on_byte_at_a_time_delivery() {
    let (mut conn, mut peer) = tunnel_with_raw_peer("codervpn manager 1.3\n").await;
    let mut buf = BytesMut::new();
    encode_frame(&get_peer_update_request(3), "m", &mut buf).unwrap();
    for b in buf.iter() {
        peer.write_all(&[*b]).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert!(matches!(
        conn.next_incoming().await,
        Some(Incoming::Request { id: 3, .. })
    ));
    // and the sans-IO decoder sees the same bytes as one frame
    let mut dec = FrameDecoder::new();
    dec.push(&buf);
    let body = dec.next_frame().unwrap().unwrap();
    let msg: ManagerMessage = decode_message(&body, "ManagerMessage").unwrap();
    assert_eq!(msg, get_peer_update_request(3));
}

#[allow(dead_code)]
fn _halves(_: OwnedReadHalf, _: OwnedWriteHalf) {}

// checklist #44 (ManagerSpeakerTests wakeUnsupportedByPeer), and #43 from the manager's side
#[tokio::test]
async fn manager_sends_wake_only_when_the_tunnel_negotiated_1_3() {
    use codervpn_proto::manager::{ManagerClient, ManagerError};
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let (r, w) = ours.into_split();
    peer.write_all(b"codervpn tunnel 1.1\n").await.unwrap();
    let conn = Connection::<ManagerSide>::handshake(r, w, VersionList::current())
        .await
        .unwrap();
    let client = ManagerClient::new(conn.handle().clone());
    let err = client.wake().await.unwrap_err();
    assert!(matches!(err, ManagerError::WakeUnsupported { .. }), "{err}");
    conn.handle().close();
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        rest, b"codervpn manager 1.3\n",
        "nothing but our header was sent"
    );

    let (manager, mut tunnel) = pair().await;
    let client = ManagerClient::new(manager.handle().clone());
    let th = tunnel.handle().clone();
    tokio::spawn(async move {
        let Some(Incoming::Request { id, msg }) = tunnel.next_incoming().await else {
            panic!()
        };
        assert!(matches!(msg.msg, Some(manager_message::Msg::Wake(_))));
        th.reply(
            id,
            TunnelMessage {
                rpc: None,
                msg: Some(tunnel_message::Msg::Wake(vpn::WakeResponse {})),
            },
        )
        .await
        .unwrap();
    });
    assert_eq!(client.wake().await.unwrap(), vpn::WakeResponse {});
}
