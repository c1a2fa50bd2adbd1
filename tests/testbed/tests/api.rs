//! The testbed's HTTP surface, as a Coder client sees it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use codervpn_engine::net::derp::{ConnectOptions, DerpTransport, NodePrivateKey, connect_with};
use codervpn_testbed::{EMBEDDED_REGION_ID, TOKEN_HEADER, Testbed, TestbedConfig};
use common::exchange;
use sha1::Digest;

async fn testbed() -> Testbed {
    Testbed::start(TestbedConfig::default()).await.unwrap()
}

fn get(tb: &Testbed, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().get(tb.url().join(path).unwrap())
}

#[tokio::test]
async fn requests_without_the_session_token_get_401_with_a_readable_body() {
    let tb = testbed().await;
    for path in ["api/v2/users/me", "api/v2/workspaceagents/connection"] {
        let r = get(&tb, path).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("logged in"),
            "{body}"
        );
        let r = get(&tb, path)
            .header(TOKEN_HEADER, "wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["message"], "Invalid session token.");
    }
}

#[tokio::test]
async fn users_me_returns_the_user() {
    let tb = testbed().await;
    let me: serde_json::Value = get(&tb, "api/v2/users/me")
        .header(TOKEN_HEADER, tb.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "testy");
    assert_eq!(me["id"], tb.deployment().user_id.to_string());
}

#[tokio::test]
async fn connection_info_points_the_embedded_relay_at_the_access_url() {
    let tb = testbed().await;
    let info: serde_json::Value = get(&tb, "api/v2/workspaceagents/connection")
        .header(TOKEN_HEADER, tb.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let region = &info["derp_map"]["Regions"][EMBEDDED_REGION_ID.to_string()];
    assert_eq!(region["EmbeddedRelay"], true);
    let nodes = region["Nodes"].as_array().unwrap();
    let node = nodes.iter().find(|n| n.get("STUNOnly").is_none()).unwrap();
    assert_eq!(node["HostName"], "127.0.0.1");
    assert_eq!(node["DERPPort"], tb.url().port().unwrap());
    assert_eq!(node["ForceHTTP"], true);
    assert!(info.get("hostname_suffix").is_none(), "omitted when unset");
    assert_eq!(info["disable_direct_connections"], false);

    let tb = Testbed::start(TestbedConfig {
        hostname_suffix: Some("float".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let info: serde_json::Value = get(&tb, "api/v2/workspaceagents/connection")
        .header(TOKEN_HEADER, tb.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["hostname_suffix"], "float");
    assert!(
        tb.summary()["agents"][0]["fqdn"][0]
            .as_str()
            .unwrap()
            .ends_with(".float.")
    );
}

#[tokio::test]
async fn buildinfo_needs_no_token() {
    let tb = testbed().await;
    let info: serde_json::Value = get(&tb, "api/v2/buildinfo")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["version"], "v2.24.3");
}

#[tokio::test]
async fn bin_serves_files_with_sha1_etag_and_304() {
    let tb = testbed().await;
    let bytes = Bytes::from(vec![7u8; 100_000]);
    tb.publish("coder-vpn-linux-amd64.so", bytes.clone());
    let r = get(&tb, "bin/coder-vpn-linux-amd64.so")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = format!("\"{}\"", hex::encode(sha1::Sha1::digest(&bytes)));
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(r.headers()["x-original-content-length"], "100000");
    assert_eq!(r.bytes().await.unwrap(), bytes);
    let r = get(&tb, "bin/coder-vpn-linux-amd64.so")
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = get(&tb, "bin/coder_vpn_linux_amd64.so")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "underscores map to dashes");
    assert_eq!(get(&tb, "bin/nope.so").send().await.unwrap().status(), 404);
    assert_eq!(get(&tb, "bin/a/b").send().await.unwrap().status(), 404);
    let listing = get(&tb, "bin/").send().await.unwrap().text().await.unwrap();
    assert_eq!(listing, "coder-vpn-linux-amd64.so\n");
}

#[tokio::test]
async fn derp_relays_between_clients_over_upgrade_and_websocket() {
    let tb = testbed().await;
    let url = tb.url().join("derp").unwrap();
    let headers = vec![(TOKEN_HEADER.to_owned(), tb.token())];
    let (ka, kb) = (NodePrivateKey::generate(), NodePrivateKey::generate());
    let opts = |transport| ConnectOptions {
        transport,
        ..Default::default()
    };
    let mut a = connect_with(&url, &headers, ka, opts(DerpTransport::Upgrade))
        .await
        .unwrap();
    let mut b = connect_with(&url, &headers, kb, opts(DerpTransport::WebSocket))
        .await
        .unwrap();
    exchange(&mut a, &mut b).await;
}

#[tokio::test]
async fn plain_get_of_derp_is_refused_with_426() {
    let tb = testbed().await;
    assert_eq!(get(&tb, "derp").send().await.unwrap().status(), 426);
}

/// coderd's latency probes answer without a token (netcheck's HTTPS fallback when UDP is
/// blocked asks `/derp/latency-check`; `coder netcheck` once saw 404 here).
#[tokio::test]
async fn latency_checks_need_no_token() {
    let tb = testbed().await;
    for path in ["derp/latency-check", "latency-check"] {
        let r = get(&tb, path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

/// How long until the server closes `s` (reading and discarding), sending `trickle` one
/// byte every 100 ms meanwhile; `None` if still open after 5 s.
async fn closed_after(mut s: tokio::net::TcpStream, trickle: &[u8]) -> Option<std::time::Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t0 = std::time::Instant::now();
    let mut bytes = trickle.iter().cycle();
    let mut buf = [0u8; 512];
    while t0.elapsed() < std::time::Duration::from_secs(5) {
        match tokio::time::timeout(std::time::Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => {
                if let Some(b) = bytes.next()
                    && s.write_all(&[*b]).await.is_err()
                {
                    return Some(t0.elapsed());
                }
            }
        }
    }
    None
}

/// A client that connects and says nothing, or sends its request head a byte at a time,
/// is dropped once the head deadline passes — and requests keep being served.
#[tokio::test]
async fn slow_or_silent_clients_are_dropped_at_the_header_deadline() {
    let tb = Testbed::start(TestbedConfig {
        header_read_timeout: std::time::Duration::from_millis(600),
        ..TestbedConfig::default()
    })
    .await
    .unwrap();
    let addr = (tb.url().host_str().unwrap(), tb.url().port().unwrap());
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (silent, trickle) = tokio::join!(
        closed_after(silent, b""),
        closed_after(
            trickle,
            b"GET /api/v2/buildinfo HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ),
    );
    for (what, t) in [("silent", silent), ("trickling", trickle)] {
        let t = t.unwrap_or_else(|| panic!("a {what} client was never dropped"));
        assert!(
            t >= std::time::Duration::from_millis(500),
            "a {what} client was dropped after {t:?}, before its deadline"
        );
    }
    let r = get(&tb, "api/v2/buildinfo").send().await.unwrap();
    assert_eq!(r.status(), 200);
}
