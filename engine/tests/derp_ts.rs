//! Interop with an independent DERP implementation: tailscale-rs's `ts_derp` client
//! connects to OUR server and exchanges packets with OUR client, both directions.
//!
//! `ts_derp::Client::connect` only dials HTTPS (TLS to a DERP map node), so the test does the
//! plain-HTTP `Upgrade: DERP` exchange itself over loopback TCP and hands the upgraded stream
//! to `ts_derp::Client::handshake`, which runs ts_derp's own DERP handshake and framing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use codervpn_engine::net::derp::{
    ClientEvent, ConnectOptions, DerpEvent, DerpServer, NodePrivateKey, NodePublicKey, connect_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(10);

fn ours(k: &ts_keys::NodePublicKey) -> NodePublicKey {
    NodePublicKey::from_bytes(*k.to_crypto_box().as_bytes())
}

fn theirs(k: &NodePublicKey) -> ts_keys::NodePublicKey {
    ts_keys::NodePublicKey::from_bytes(*k.as_bytes())
}

/// `GET /derp` + `Upgrade: DERP` by hand; reads the 101 head byte by byte so that no DERP
/// byte after it is consumed.
async fn upgrade(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /derp HTTP/1.1\r\nHost: derp\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    tcp
}

async fn next_packet(
    events: &mut tokio::sync::mpsc::Receiver<DerpEvent>,
) -> (NodePublicKey, Bytes) {
    let fut = async {
        loop {
            if let DerpEvent::Relay(ClientEvent::Packet { from, data }) =
                events.recv().await.unwrap()
            {
                return (from, data);
            }
        }
    };
    tokio::time::timeout(T, fut).await.unwrap()
}

#[tokio::test]
async fn ts_derp_client_and_our_client_exchange_packets_through_our_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = DerpServer::new(NodePrivateKey::generate());
    let s = server.clone();
    tokio::spawn(async move { s.listen(listener).await });

    // Their client.
    let ts_pair = ts_keys::NodeKeyPair::random();
    let ts_client =
        tokio::time::timeout(T, ts_derp::Client::handshake(upgrade(addr).await, &ts_pair))
            .await
            .unwrap()
            .unwrap();

    // Our client.
    let url = url::Url::parse(&format!("http://{addr}/derp")).unwrap();
    let conn = connect_with(
        &url,
        &[],
        NodePrivateKey::generate(),
        ConnectOptions::default(),
    )
    .await
    .unwrap();
    let (handle, mut events) = (conn.handle, conn.events);
    // Wait until our client is registered (its Connected event).
    tokio::time::timeout(T, async {
        loop {
            if let DerpEvent::Relay(ClientEvent::Connected { .. }) = events.recv().await.unwrap() {
                return;
            }
        }
    })
    .await
    .unwrap();

    // ts_derp → ours.
    ts_client
        .send_one(theirs(&handle.public_key()), b"hello from ts_derp")
        .await
        .unwrap();
    let (from, data) = next_packet(&mut events).await;
    assert_eq!(from, ours(&ts_pair.public));
    assert_eq!(data, Bytes::from_static(b"hello from ts_derp"));

    // ours → ts_derp.
    handle
        .send(
            ours(&ts_pair.public),
            Bytes::from_static(b"hello from codervpn"),
        )
        .await
        .unwrap();
    let (src, pkt) = tokio::time::timeout(T, ts_client.recv_one())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ours(&src), handle.public_key());
    assert_eq!(pkt.as_ref(), b"hello from codervpn");

    // And a burst of full-size packets both ways.
    for i in 0..50u8 {
        ts_client
            .send_one(theirs(&handle.public_key()), &[i; 1200])
            .await
            .unwrap();
        handle
            .send(ours(&ts_pair.public), Bytes::from(vec![i; 1200]))
            .await
            .unwrap();
    }
    for i in 0..50u8 {
        let (_, data) = next_packet(&mut events).await;
        assert_eq!(&data[..], &[i; 1200][..]);
        let (_, pkt) = tokio::time::timeout(T, ts_client.recv_one())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pkt.as_ref(), &[i; 1200][..]);
    }

    // ts_derp sends snake_case client-info keys (`can_ack_pings`, `mesh_key: "none"`), which
    // Go's encoding/json ignores and so do we: it is an ordinary, non-mesh client.
    let clients = server.clients().await.unwrap();
    assert!(clients.iter().any(|c| c.key == ours(&ts_pair.public)));
}
