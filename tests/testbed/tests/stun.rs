//! The testbed's STUN server, found the way a client finds it: the `STUNOnly` node of the
//! embedded region in the DERP map from `/api/v2/workspaceagents/connection`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use codervpn_engine::net::stun::{binding_request, parse_response};
use codervpn_testbed::{EMBEDDED_REGION_ID, Testbed, TestbedConfig};
use common::served_map;
use tokio::net::UdpSocket;

/// The embedded region's nodes from the served connection info.
async fn served_nodes(tb: &Testbed) -> Vec<serde_json::Value> {
    served_map(tb).await["Regions"][EMBEDDED_REGION_ID.to_string()]["Nodes"]
        .as_array()
        .unwrap()
        .clone()
}

/// The STUN address the served DERP map publishes.
async fn served_stun_addr(tb: &Testbed) -> SocketAddr {
    let nodes = served_nodes(tb).await;
    let node = nodes.iter().find(|n| n["STUNOnly"] == true).unwrap();
    let host = node["HostName"].as_str().unwrap();
    let port = node["STUNPort"].as_u64().unwrap();
    format!("{host}:{port}").parse().unwrap()
}

/// No workspaces: agents STUN too, and these tests count the server's requests exactly.
fn no_agents() -> TestbedConfig {
    TestbedConfig {
        workspaces: 0,
        ..Default::default()
    }
}

async fn reply(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1500];
    let n = tokio::time::timeout(wait, socket.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(buf[..n].to_vec())
}

#[tokio::test]
async fn binding_request_to_the_published_stun_node_returns_the_senders_address() {
    let tb = Testbed::start(no_agents()).await.unwrap();
    let stun = served_stun_addr(&tb).await;
    assert_eq!(Some(stun), tb.stun_addr());
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(stun).await.unwrap();
    let tx = [0x5a; 12];
    socket.send(&binding_request(tx)).await.unwrap();
    let got = reply(&socket, Duration::from_secs(5)).await.unwrap();
    let (got_tx, mapped) = parse_response(&got).unwrap();
    assert_eq!(got_tx, tx);
    assert_eq!(mapped, socket.local_addr().unwrap());
    assert_eq!(tb.stun_requests(), 1);
    assert_eq!(tb.stun_dropped(), 0);
}

#[tokio::test]
async fn garbage_and_non_tailscale_requests_get_no_answer_and_are_counted() {
    let tb = Testbed::start(no_agents()).await.unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(tb.stun_addr().unwrap()).await.unwrap();
    // A bare RFC 5389 binding request (no SOFTWARE `tailnode`, no FINGERPRINT).
    let mut plain = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    plain.extend_from_slice(&[1; 12]);
    let mut bad_fingerprint = binding_request([2; 12]);
    *bad_fingerprint.last_mut().unwrap() ^= 0xff;
    for packet in [b"not stun at all".to_vec(), plain, bad_fingerprint] {
        socket.send(&packet).await.unwrap();
    }
    assert_eq!(reply(&socket, Duration::from_millis(300)).await, None);
    // A real request afterwards is still answered: the server did not stop.
    socket.send(&binding_request([3; 12])).await.unwrap();
    assert!(reply(&socket, Duration::from_secs(5)).await.is_some());
    assert_eq!(tb.stun_dropped(), 3);
    assert_eq!(tb.stun_requests(), 1);
}

#[tokio::test]
async fn without_stun_the_map_has_no_stun_node_and_the_relay_none_either() {
    let tb = Testbed::start(TestbedConfig {
        stun: false,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(tb.stun_addr(), None);
    let nodes = served_nodes(&tb).await;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["STUNPort"], -1);
    assert!(nodes[0].get("STUNOnly").is_none());
    assert!(tb.summary().get("stun").is_none());
}

/// Cross-check with an independent codec: aioice's (Python; `.ci/run` installs it) builds
/// the Tailscale-style request and parses our answer; its plain request gets none.
#[tokio::test]
async fn aioice_client_reads_its_own_address_and_its_plain_request_is_ignored() {
    let tb = Testbed::start(no_agents()).await.unwrap();
    let stun = served_stun_addr(&tb).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/stun_client.py");
    let run = move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(stun.ip().to_string())
            .arg(stun.port().to_string())
            .output()
            .expect("python3 is needed for this test")
    };
    // The server runs on this runtime: wait for the script off it.
    let out = tokio::task::spawn_blocking(run).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "stun_client.py failed (install with `pip install aioice`):\n{stdout}\n{stderr}"
    );
    assert!(stdout.starts_with("stun ok 127.0.0.1:"), "{stdout}");
    assert_eq!(tb.stun_requests(), 1);
    assert_eq!(tb.stun_dropped(), 1);
}
