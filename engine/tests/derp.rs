//! The DERP server and client shells over real loopback TCP (tailnet.md §13.3): HTTP upgrade
//! and WebSocket variants, relaying, peer gone, refusals, reconnects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use codervpn_engine::net::derp::decoder::{FrameDecoder, Policy};
use codervpn_engine::net::derp::frame::Frame;
use codervpn_engine::net::derp::{
    ClientEvent, ConnectOptions, DerpEvent, DerpHandle, DerpServer, DerpTransport, NodePrivateKey,
    NodePublicKey, PeerGoneReason, connect_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use url::Url;

const T: Duration = Duration::from_secs(10);

async fn start_server() -> (DerpServer, Url) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/derp", listener.local_addr().unwrap())).unwrap();
    let server = DerpServer::new(NodePrivateKey::generate());
    let s = server.clone();
    tokio::spawn(async move { s.listen(listener).await });
    (server, url)
}

struct Peer {
    handle: DerpHandle,
    events: mpsc::Receiver<DerpEvent>,
    key: NodePublicKey,
}

async fn client(url: &Url, transport: DerpTransport) -> Peer {
    client_with(
        url,
        ConnectOptions {
            transport,
            ..ConnectOptions::default()
        },
    )
    .await
}

async fn client_with(url: &Url, options: ConnectOptions) -> Peer {
    let key = NodePrivateKey::generate();
    let public = key.public_key();
    let headers = vec![("Coder-Session-Token".to_owned(), "secret".to_owned())];
    let conn = connect_with(url, &headers, key, options).await.unwrap();
    let mut peer = Peer {
        handle: conn.handle,
        events: conn.events,
        key: public,
    };
    peer.wait_for(|e| matches!(e, DerpEvent::Relay(ClientEvent::Connected { .. })))
        .await;
    peer
}

impl Peer {
    /// Skips events until one matches.
    async fn wait_for(&mut self, want: impl Fn(&DerpEvent) -> bool) -> DerpEvent {
        tokio::time::timeout(T, async {
            loop {
                let e = self.events.recv().await.expect("event channel closed");
                if want(&e) {
                    return e;
                }
            }
        })
        .await
        .expect("timed out waiting for an event")
    }

    async fn next_packet(&mut self) -> (NodePublicKey, Bytes) {
        match self
            .wait_for(|e| matches!(e, DerpEvent::Relay(ClientEvent::Packet { .. })))
            .await
        {
            DerpEvent::Relay(ClientEvent::Packet { from, data }) => (from, data),
            _ => unreachable!(),
        }
    }

    async fn send(&self, to: &Peer, data: &'static [u8]) {
        self.handle
            .send(to.key, Bytes::from_static(data))
            .await
            .unwrap();
    }
}

async fn exchange_both_ways(a: &mut Peer, b: &mut Peer) {
    a.send(b, b"hello b").await;
    assert_eq!(
        b.next_packet().await,
        (a.key, Bytes::from_static(b"hello b"))
    );
    b.send(a, b"hello a").await;
    assert_eq!(
        a.next_packet().await,
        (b.key, Bytes::from_static(b"hello a"))
    );
}

#[tokio::test]
async fn two_clients_exchange_packets_over_http_upgrade() {
    let (_server, url) = start_server().await;
    let mut a = client(&url, DerpTransport::Upgrade).await;
    let mut b = client(&url, DerpTransport::Upgrade).await;
    exchange_both_ways(&mut a, &mut b).await;
}

#[tokio::test]
async fn two_clients_exchange_packets_over_websocket() {
    let (_server, url) = start_server().await;
    let mut a = client(&url, DerpTransport::WebSocket).await;
    let mut b = client(&url, DerpTransport::WebSocket).await;
    exchange_both_ways(&mut a, &mut b).await;
}

#[tokio::test]
async fn websocket_and_upgrade_clients_reach_each_other() {
    let (_server, url) = start_server().await;
    let mut a = client(&url, DerpTransport::WebSocket).await;
    let mut b = client(&url, DerpTransport::Upgrade).await;
    exchange_both_ways(&mut a, &mut b).await;
}

#[tokio::test]
async fn many_packets_arrive_in_order_and_intact() {
    let (_server, url) = start_server().await;
    let a = client(&url, DerpTransport::Upgrade).await;
    let mut b = client(&url, DerpTransport::WebSocket).await;
    for i in 0..200u32 {
        let mut p = vec![(i % 251) as u8; 1200 + (i as usize % 7)];
        p[..4].copy_from_slice(&i.to_be_bytes());
        a.handle.send(b.key, Bytes::from(p)).await.unwrap();
    }
    for i in 0..200u32 {
        let (from, data) = b.next_packet().await;
        assert_eq!(from, a.key);
        assert_eq!(&data[..4], &i.to_be_bytes());
        assert_eq!(data.len(), 1200 + (i as usize % 7));
    }
}

#[tokio::test]
async fn receiver_hears_peer_gone_when_its_sender_disconnects() {
    let (_server, url) = start_server().await;
    let a = client(&url, DerpTransport::Upgrade).await;
    let mut b = client(&url, DerpTransport::Upgrade).await;
    let mut c = client(&url, DerpTransport::Upgrade).await;
    a.send(&b, b"x").await;
    b.next_packet().await;
    // c sent to a, but a never sent to c: c hears nothing.
    c.send(&a, b"y").await;
    a.handle.close().await;
    let gone = b
        .wait_for(|e| matches!(e, DerpEvent::Relay(ClientEvent::PeerGone { .. })))
        .await;
    let DerpEvent::Relay(ClientEvent::PeerGone { key, reason }) = gone else {
        unreachable!()
    };
    assert_eq!((key, reason), (a.key, PeerGoneReason::Disconnected));
    // Nothing for c: a ping round trip proves no peer-gone was queued before the pong.
    c.handle.ping(*b"12345678").await.unwrap();
    let e = c
        .wait_for(|e| {
            matches!(
                e,
                DerpEvent::Relay(ClientEvent::Pong { .. } | ClientEvent::PeerGone { .. })
            )
        })
        .await;
    assert!(
        matches!(e, DerpEvent::Relay(ClientEvent::Pong { .. })),
        "{e:?}"
    );
}

#[tokio::test]
async fn disco_to_unknown_key_gets_peer_gone_not_here() {
    let (_server, url) = start_server().await;
    let mut a = client(&url, DerpTransport::Upgrade).await;
    let nobody = NodePrivateKey::generate().public_key();
    let mut disco = b"TS\xf0\x9f\x92\xac".to_vec();
    disco.resize(100, 1);
    a.handle.send(nobody, Bytes::from(disco)).await.unwrap();
    let e = a
        .wait_for(|e| matches!(e, DerpEvent::Relay(ClientEvent::PeerGone { .. })))
        .await;
    let DerpEvent::Relay(ClientEvent::PeerGone { key, reason }) = e else {
        unreachable!()
    };
    assert_eq!((key, reason), (nobody, PeerGoneReason::NotHere));
}

#[tokio::test]
async fn server_records_note_preferred() {
    let (server, url) = start_server().await;
    let a = client_with(
        &url,
        ConnectOptions {
            preferred: true,
            ..ConnectOptions::default()
        },
    )
    .await;
    let b = client(&url, DerpTransport::Upgrade).await;
    // A ping round trip orders the note-preferred before our query.
    let mut a = a;
    a.handle.ping([1; 8]).await.unwrap();
    a.wait_for(|e| matches!(e, DerpEvent::Relay(ClientEvent::Pong { .. })))
        .await;
    let clients = server.clients().await.unwrap();
    let pref: Vec<(NodePublicKey, bool)> = clients.iter().map(|c| (c.key, c.preferred)).collect();
    assert!(pref.contains(&(a.key, true)), "{pref:?}");
    assert!(pref.contains(&(b.key, false)), "{pref:?}");
}

#[tokio::test]
async fn health_and_restart_announcements_reach_clients() {
    let (server, url) = start_server().await;
    let mut a = client(&url, DerpTransport::Upgrade).await;
    server
        .set_health(a.key, "duplicate connection")
        .await
        .unwrap();
    let e = a
        .wait_for(|e| matches!(e, DerpEvent::Relay(ClientEvent::Health { .. })))
        .await;
    assert!(
        matches!(e, DerpEvent::Relay(ClientEvent::Health { problem: Some(ref p) }) if p == "duplicate connection")
    );
    server
        .announce_restart(Duration::from_millis(10), Duration::from_secs(2))
        .await
        .unwrap();
    let e = a
        .wait_for(|e| matches!(e, DerpEvent::Relay(ClientEvent::Restarting { .. })))
        .await;
    assert!(matches!(
        e,
        DerpEvent::Relay(ClientEvent::Restarting { reconnect_in, .. }) if reconnect_in == Duration::from_millis(10)
    ));
}

#[tokio::test]
async fn client_reconnects_after_the_server_drops_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = Url::parse(&format!("http://{addr}/derp")).unwrap();
    let first = DerpServer::new(NodePrivateKey::generate());
    let s = first.clone();
    let listening = tokio::spawn(async move { s.listen(listener).await });
    let mut a = client(&url, DerpTransport::Upgrade).await;

    first.close().await;
    listening.await.unwrap().unwrap();
    let e = a
        .wait_for(|e| matches!(e, DerpEvent::Disconnected { .. }))
        .await;
    assert!(matches!(e, DerpEvent::Disconnected { .. }));

    let listener = TcpListener::bind(addr).await.unwrap();
    let second = DerpServer::new(NodePrivateKey::generate());
    let s = second.clone();
    tokio::spawn(async move { s.listen(listener).await });
    let e = a
        .wait_for(|e| matches!(e, DerpEvent::Relay(ClientEvent::Connected { .. })))
        .await;
    let DerpEvent::Relay(ClientEvent::Connected { server_key, .. }) = e else {
        unreachable!()
    };
    assert_eq!(server_key, second.public_key());
    let mut b = client(&url, DerpTransport::Upgrade).await;
    exchange_both_ways(&mut a, &mut b).await;
}

#[tokio::test]
async fn plain_get_is_refused_with_426() {
    let (_server, url) = start_server().await;
    let mut tcp = TcpStream::connect(url.socket_addrs(|| None).unwrap()[0])
        .await
        .unwrap();
    tcp.write_all(b"GET /derp HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tokio::time::timeout(T, tcp.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{resp}"
    );
    assert!(resp.ends_with("DERP requires connection upgrade"), "{resp}");
}

/// Reads DERP frames from a raw stream until EOF; returns them.
async fn read_frames_until_eof(tcp: &mut TcpStream) -> Vec<u8> {
    let mut types = Vec::new();
    let mut d = FrameDecoder::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(T, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        if n == 0 {
            return types;
        }
        d.push(&buf[..n]);
        while let Some(f) = d.next_frame(Policy::Client).unwrap() {
            types.push(f.typ);
        }
    }
}

#[tokio::test]
async fn forged_client_info_is_rejected_and_the_connection_closed() {
    let (_server, url) = start_server().await;
    let mut tcp = TcpStream::connect(url.socket_addrs(|| None).unwrap()[0])
        .await
        .unwrap();
    tcp.write_all(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    let mut hdr = [0u8; 5 + 40];
    tcp.read_exact(&mut hdr).await.unwrap();
    let Frame::ServerKey { key: server_key } = Frame::parse(hdr[0], &hdr[5..]).unwrap() else {
        panic!()
    };
    // Claim one key, seal with another.
    let claimed = NodePrivateKey::generate().public_key();
    let sealed = NodePrivateKey::generate().seal_to(&server_key, br#"{"version":2}"#);
    let mut out = bytes::BytesMut::new();
    Frame::ClientInfo {
        key: claimed,
        sealed: &sealed,
    }
    .encode(&mut out)
    .unwrap();
    tcp.write_all(&out).await.unwrap();
    assert_eq!(
        read_frames_until_eof(&mut tcp).await,
        Vec::<u8>::new(),
        "no server info, just EOF"
    );
}

#[tokio::test]
async fn caller_headers_reach_the_server_and_a_pre_upgraded_stream_can_be_served() {
    // An HTTP front end of our own reads the request, answers 101, and hands the stream on
    // (as a hyper-based testbed server would).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/derp", listener.local_addr().unwrap())).unwrap();
    let server = DerpServer::new(NodePrivateKey::generate());
    let s = server.clone();
    let (heads_tx, mut heads) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tcp.read_u8().await.unwrap());
            }
            heads_tx
                .send(String::from_utf8(head).unwrap())
                .await
                .unwrap();
            let resp = codervpn_engine::net::derp::http::derp_switching_response(&s.public_key());
            tcp.write_all(&resp).await.unwrap();
            let s = s.clone();
            tokio::spawn(async move { s.serve_upgraded(tcp, Bytes::new()).await });
        }
    });
    let mut a = client(&url, DerpTransport::Upgrade).await;
    let mut b = client(&url, DerpTransport::Upgrade).await;
    let head = heads.recv().await.unwrap();
    assert!(head.starts_with("GET /derp HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains("\r\nCoder-Session-Token: secret\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n"),
        "{head}"
    );
    exchange_both_ways(&mut a, &mut b).await;
}

#[tokio::test]
async fn upgrade_refused_with_4xx_falls_back_to_websocket() {
    // A proxy that refuses `Upgrade: DERP` (403) but passes WebSocket through.
    use codervpn_engine::net::derp::http::{self, UpgradeKind};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/derp", listener.local_addr().unwrap())).unwrap();
    let server = DerpServer::new(NodePrivateKey::generate());
    let (kinds_tx, mut kinds) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tcp.read_u8().await.unwrap());
            }
            match http::parse_upgrade_request(&head) {
                Ok(UpgradeKind::WebSocket { key }) => {
                    kinds_tx.send("websocket").await.unwrap();
                    tcp.write_all(&http::websocket_switching_response(&key))
                        .await
                        .unwrap();
                    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        tcp,
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    let s = server.clone();
                    tokio::spawn(async move { s.serve_websocket(ws).await });
                }
                _ => {
                    kinds_tx.send("refused").await.unwrap();
                    tcp.write_all(&http::error_response(403, "Forbidden", "no upgrades here"))
                        .await
                        .unwrap();
                }
            }
        }
    });
    let mut a = client(&url, DerpTransport::Upgrade).await;
    assert_eq!(kinds.recv().await, Some("refused"));
    assert_eq!(kinds.recv().await, Some("websocket"));
    let mut b = client(&url, DerpTransport::WebSocket).await;
    exchange_both_ways(&mut a, &mut b).await;
}

/// A client that sends its request head a byte every 100 ms, never finishing it, is
/// answered 408 and dropped once the head deadline (for the whole head, not per read)
/// passes; a client that finishes in time is still served.
#[tokio::test]
async fn a_head_never_finished_gets_408_at_the_deadline() {
    let (server, url) = start_server().await;
    server.set_head_timeout(Duration::from_millis(600));
    let addr = (url.host_str().unwrap(), url.port().unwrap());
    let (mut r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let trickle = tokio::spawn(async move {
        w.write_all(b"GET /derp HTTP/1.1\r\nUpgrade: DERP\r\nX-Slow: ")
            .await
            .unwrap();
        while w.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let t0 = std::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(T, r.read_to_end(&mut answer))
        .await
        .expect("the slow client was never dropped")
        .unwrap();
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(500), "dropped after {took:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    trickle.abort();
    let mut a = client(&url, DerpTransport::Upgrade).await;
    let mut b = client(&url, DerpTransport::Upgrade).await;
    exchange_both_ways(&mut a, &mut b).await;
}

/// Four times the per-client byte bound relayed in lock-step batches, every packet
/// delivered: the bound counts what is queued now, not what was ever relayed.
#[tokio::test]
async fn relaying_many_times_the_byte_bound_loses_nothing_in_step() {
    use codervpn_engine::net::derp::PER_CLIENT_QUEUE_BYTES;
    let (_server, url) = start_server().await;
    let a = client(&url, DerpTransport::Upgrade).await;
    let mut b = client(&url, DerpTransport::Upgrade).await;
    let packet = Bytes::from(vec![7u8; 1200]);
    let batches = 4 * PER_CLIENT_QUEUE_BYTES / (100 * packet.len()) + 1;
    for batch in 0..batches {
        for _ in 0..100 {
            a.handle.send(b.key, packet.clone()).await.unwrap();
        }
        for i in 0..100 {
            let (from, data) = b.next_packet().await;
            assert_eq!(
                (from, data.len()),
                (a.key, 1200),
                "batch {batch} packet {i}"
            );
        }
    }
}
