//! DERP against Coder's own Go code (coder's tailscale fork, pinned by tests/coder-go):
//! Go `derphttp` clients relay through OUR server, OUR clients relay through coder's DERP
//! server (`coderpeer serve`: `derp.NewServer` + `derphttp.Handler` wrapped in
//! `tailnet.WithWebsocketSupport`, as coderd mounts it), and a Go client and ours exchange
//! packets through each server — over `Upgrade: DERP` and over WebSocket.
//!
//! The Go binaries come from `tests/coder-go/build.sh` (`.ci/run` runs it) in
//! `target/coder-go/`; a missing one fails these tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use codervpn_engine::net::derp::{
    ClientEvent, ConnectOptions, DerpEvent, DerpServer, DerpTransport, NodePrivateKey,
    NodePublicKey, connect_with,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use url::Url;

const T: Duration = Duration::from_secs(10);

fn coderpeer() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/coder-go/coderpeer");
    assert!(
        p.exists(),
        "{} is missing: run tests/coder-go/build.sh (Coder's Go peers; .ci/run does)",
        p.display()
    );
    p
}

/// Kills the child when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's stdout until a line starts with `prefix`; returns the rest of it.
fn read_line_starting(child: &mut Child, prefix: &str) -> String {
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix(prefix) {
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return rest.to_owned();
        }
    }
    panic!("the child ended before printing {prefix:?}");
}

async fn our_server() -> (DerpServer, Url) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/derp", listener.local_addr().unwrap())).unwrap();
    let server = DerpServer::new(NodePrivateKey::generate());
    let s = server.clone();
    tokio::spawn(async move { s.listen(listener).await });
    (server, url)
}

/// `coderpeer serve` with no workspaces: coder's DERP server at `<url>/derp`.
fn go_server() -> (Proc, Url) {
    let mut child = Command::new(coderpeer())
        .args(["serve", "--workspaces", "0", "--no-stun"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = read_line_starting(&mut child, "");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let url = Url::parse(&format!("{}/derp", v["url"].as_str().unwrap())).unwrap();
    (Proc(child), url)
}

/// A Go client that echoes every packet back to its sender; returns it and its key.
fn go_echo(url: &Url, websockets: bool) -> (Proc, NodePublicKey) {
    let mut cmd = Command::new(coderpeer());
    cmd.args(["derp", "--mode", "echo", "--url", url.as_str()]);
    if websockets {
        cmd.arg("--websockets");
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let key = read_line_starting(&mut child, "echo key nodekey:");
    let bytes: [u8; 32] = hex::decode(key.trim()).unwrap().try_into().unwrap();
    (Proc(child), NodePublicKey::from_bytes(bytes))
}

struct Ours {
    handle: codervpn_engine::net::derp::DerpHandle,
    events: mpsc::Receiver<DerpEvent>,
    key: NodePublicKey,
}

async fn our_client(url: &Url, transport: DerpTransport) -> Ours {
    let key = NodePrivateKey::generate();
    let public = key.public_key();
    let conn = connect_with(
        url,
        &[],
        key,
        ConnectOptions {
            transport,
            ..ConnectOptions::default()
        },
    )
    .await
    .unwrap();
    let mut c = Ours {
        handle: conn.handle,
        events: conn.events,
        key: public,
    };
    tokio::time::timeout(T, async {
        loop {
            if let DerpEvent::Relay(ClientEvent::Connected { .. }) = c.events.recv().await.unwrap()
            {
                return;
            }
        }
    })
    .await
    .expect("our client did not connect");
    c
}

impl Ours {
    async fn next_packet(&mut self) -> (NodePublicKey, Bytes) {
        tokio::time::timeout(T, async {
            loop {
                if let DerpEvent::Relay(ClientEvent::Packet { from, data }) =
                    self.events.recv().await.expect("event channel closed")
                {
                    return (from, data);
                }
            }
        })
        .await
        .expect("no packet within 10 s")
    }
}

/// 100 packets of varied sizes to `to`, each must come back intact and in order.
async fn round_trips(c: &mut Ours, to: NodePublicKey) {
    for i in 0..100u32 {
        let mut p = vec![(i % 251) as u8; 1 + (i as usize * 13) % 1300];
        let n = p.len().min(4);
        p[..n].copy_from_slice(&i.to_be_bytes()[..n]);
        c.handle.send(to, Bytes::from(p.clone())).await.unwrap();
        let (from, data) = c.next_packet().await;
        assert_eq!(from, to, "packet {i} came from another key");
        assert_eq!(&data[..], &p[..], "packet {i} came back changed");
    }
}

/// Through the DERP server at `url`, over upgrade and then WebSocket: a Go client echoes and
/// ours sends it 100 packets, each of which must come back intact.
async fn with_a_go_echo(url: &Url) {
    for (transport, ws) in [
        (DerpTransport::Upgrade, false),
        (DerpTransport::WebSocket, true),
    ] {
        let (_go, go_key) = go_echo(url, ws);
        let mut c = our_client(url, transport).await;
        round_trips(&mut c, go_key).await;
    }
}

fn go_pair(url: &Url, websockets: bool) {
    let mut cmd = Command::new(coderpeer());
    cmd.args([
        "derp",
        "--mode",
        "pair",
        "--packets",
        "200",
        "--url",
        url.as_str(),
    ]);
    if websockets {
        cmd.arg("--websockets");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("derp pair ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn go_derp_clients_relay_through_our_server_over_upgrade_and_websocket() {
    let (_server, url) = our_server().await;
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        go_pair(&u, false);
        go_pair(&u, true);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn our_client_and_a_go_client_exchange_packets_through_our_server() {
    let (_server, url) = our_server().await;
    with_a_go_echo(&url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn our_clients_relay_through_coders_derp_server_over_upgrade_and_websocket() {
    let (_go, url) = go_server();
    let mut a = our_client(&url, DerpTransport::Upgrade).await;
    let mut b = our_client(&url, DerpTransport::WebSocket).await;
    a.handle
        .send(b.key, Bytes::from_static(b"to b"))
        .await
        .unwrap();
    assert_eq!(b.next_packet().await, (a.key, Bytes::from_static(b"to b")));
    b.handle
        .send(a.key, Bytes::from_static(b"to a"))
        .await
        .unwrap();
    assert_eq!(a.next_packet().await, (b.key, Bytes::from_static(b"to a")));
}

#[tokio::test(flavor = "multi_thread")]
async fn our_client_and_a_go_client_exchange_packets_through_coders_server() {
    let (_go, url) = go_server();
    with_a_go_echo(&url).await;
}
