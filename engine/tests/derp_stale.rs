//! A DERP connection that goes silent without closing — what a suspend leaves behind when
//! the server or a NAT dropped the connection meanwhile (issue #14): a probe (sent on
//! every wake) that gets no pong within its timeout drops the connection and dials again
//! at once; a write the server does not take within 5 s does the same.
//!
//! Between client and server runs a TCP proxy that can be told to stop forwarding (both
//! ways) without closing anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codervpn_engine::net::derp::{
    ClientEvent, ConnectError, ConnectOptions, DerpEvent, DerpServer, NodePrivateKey, connect_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use url::Url;

const T: Duration = Duration::from_secs(15);

/// A proxy to `to`; while `silent` is set it neither reads nor writes (connections stay
/// open, data stays in the kernel's buffers).
async fn proxy(to: std::net::SocketAddr, silent: Arc<AtomicBool>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (a, _) = listener.accept().await.unwrap();
            let b = TcpStream::connect(to).await.unwrap();
            let (ar, aw) = a.into_split();
            let (br, bw) = b.into_split();
            tokio::spawn(pump(ar, bw, silent.clone()));
            tokio::spawn(pump(br, aw, silent.clone()));
        }
    });
    addr
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while silent.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        // Read just before silence fell: held back until it lifts.
        while silent.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn setup() -> (
    Arc<AtomicBool>,
    codervpn_engine::net::derp::DerpHandle,
    mpsc::Receiver<DerpEvent>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = DerpServer::new(NodePrivateKey::generate());
    tokio::spawn(async move { server.listen(listener).await });
    let silent = Arc::new(AtomicBool::new(false));
    let via = proxy(server_addr, silent.clone()).await;
    let url = Url::parse(&format!("http://{via}/derp")).unwrap();
    let conn = connect_with(
        &url,
        &[],
        NodePrivateKey::generate(),
        ConnectOptions::default(),
    )
    .await
    .unwrap();
    let mut events = conn.events;
    connected(&mut events).await;
    (silent, conn.handle, events)
}

async fn connected(events: &mut mpsc::Receiver<DerpEvent>) {
    tokio::time::timeout(T, async {
        while let Some(e) = events.recv().await {
            if matches!(e, DerpEvent::Relay(ClientEvent::Connected { .. })) {
                return;
            }
        }
        panic!("events closed");
    })
    .await
    .expect("no Connected");
}

async fn disconnected(events: &mut mpsc::Receiver<DerpEvent>) -> (Arc<ConnectError>, Duration) {
    tokio::time::timeout(T, async {
        while let Some(e) = events.recv().await {
            if let DerpEvent::Disconnected { error, retry_in } = e {
                return (error, retry_in);
            }
        }
        panic!("events closed");
    })
    .await
    .expect("no Disconnected")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_of_a_live_connection_changes_nothing() {
    let (_silent, handle, mut events) = setup().await;
    handle.probe(Duration::from_millis(500)).unwrap();
    let quiet = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(e) = events.recv().await {
            if let DerpEvent::Disconnected { error, .. } = e {
                return error;
            }
        }
        std::future::pending().await
    })
    .await;
    assert!(quiet.is_err(), "a live connection was dropped: {quiet:?}");
    assert_eq!(handle.stats().connects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_probe_drops_the_connection_and_redials_at_once() {
    let (silent, handle, mut events) = setup().await;
    silent.store(true, Ordering::Relaxed);
    let start = Instant::now();
    handle.probe(Duration::from_millis(500)).unwrap();
    let (error, retry_in) = disconnected(&mut events).await;
    assert!(matches!(*error, ConnectError::Stale { .. }), "{error}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        retry_in,
        Duration::ZERO,
        "a stale connection is redialled at once"
    );
    silent.store(false, Ordering::Relaxed);
    connected(&mut events).await;
    assert_eq!(handle.stats().connects, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_server_does_not_take_within_5_s_drops_the_connection() {
    let (silent, handle, mut events) = setup().await;
    silent.store(true, Ordering::Relaxed);
    // Fill the kernel's buffers on the way to the silent proxy until a write blocks.
    let to = NodePrivateKey::generate().public_key();
    let sender = tokio::spawn(async move {
        let packet = Bytes::from(vec![7u8; 60 * 1024]);
        loop {
            if handle.send(to, packet.clone()).await.is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    let (error, _) = disconnected(&mut events).await;
    assert!(
        matches!(*error, ConnectError::WriteTimeout { .. }),
        "{error}"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(12),
        "{took:?}"
    );
    sender.abort();
}
