//! The optional second DERP region and the STUN delay: what a client needs to choose a
//! home region. Real sockets throughout: the served DERP map (JSON and protobuf), STUN over
//! UDP, DERP clients over TCP (and TLS).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use codervpn_engine::net::derp::{ConnectOptions, DerpTransport, NodePrivateKey, connect_with};
use codervpn_engine::net::stun::{binding_request, parse_response};
use codervpn_engine::session::rpc::{DialOptions, TailnetClient};
use codervpn_testbed::{
    EMBEDDED_REGION_ID, SECOND_REGION_ID, TOKEN_HEADER, Testbed, TestbedConfig,
};
use common::{exchange, served_map};
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(10);

/// Two regions, no agents (they would STUN and DERP too, and these tests count).
fn two_regions() -> TestbedConfig {
    TestbedConfig {
        workspaces: 0,
        second_region: true,
        ..Default::default()
    }
}

/// `region`'s nodes in the served JSON map: (STUN-only node's address, relay node).
fn json_nodes(map: &serde_json::Value, region: i64) -> (SocketAddr, serde_json::Value) {
    let nodes = map["Regions"][region.to_string()]["Nodes"]
        .as_array()
        .unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let stun = nodes.iter().find(|n| n["STUNOnly"] == true).unwrap();
    let addr = format!(
        "{}:{}",
        stun["HostName"].as_str().unwrap(),
        stun["STUNPort"]
    );
    let relay = nodes.iter().find(|n| n["STUNOnly"] != true).unwrap();
    (addr.parse().unwrap(), relay.clone())
}

/// The `/derp` URL of `region`'s relay node in the served JSON map, as a client builds it.
fn relay_url(map: &serde_json::Value, region: i64) -> url::Url {
    let (_, relay) = json_nodes(map, region);
    let scheme = if relay["ForceHTTP"] == true {
        "http"
    } else {
        "https"
    };
    let host = relay["HostName"].as_str().unwrap();
    url::Url::parse(&format!("{scheme}://{host}:{}/derp", relay["DERPPort"])).unwrap()
}

#[tokio::test]
async fn served_json_map_has_both_regions_with_their_stun_and_relay_nodes() {
    let tb = Testbed::start(two_regions()).await.unwrap();
    let map = served_map(&tb).await;
    assert_eq!(map["Regions"].as_object().unwrap().len(), 2);

    let main = &map["Regions"][EMBEDDED_REGION_ID.to_string()];
    assert_eq!(main["EmbeddedRelay"], true);
    let (stun, relay) = json_nodes(&map, EMBEDDED_REGION_ID);
    assert_eq!(Some(stun), tb.stun_addr());
    assert_eq!(relay["DERPPort"], tb.url().port().unwrap());

    let second = &map["Regions"][SECOND_REGION_ID.to_string()];
    assert_eq!(second["EmbeddedRelay"], false);
    assert_eq!(second["RegionID"], SECOND_REGION_ID);
    assert_eq!(second["RegionCode"], "second");
    assert_eq!(second["RegionName"], "Second Relay");
    let (stun, relay) = json_nodes(&map, SECOND_REGION_ID);
    assert_eq!(Some(stun), tb.region_stun_addr(SECOND_REGION_ID));
    assert_ne!(Some(stun), tb.stun_addr(), "a STUN server of its own");
    let addr = tb.second_region_addr().unwrap();
    assert_eq!(relay["Name"], "1000a");
    assert_eq!(relay["RegionID"], SECOND_REGION_ID);
    assert_eq!(relay["HostName"], addr.ip().to_string());
    assert_eq!(relay["DERPPort"], addr.port());
    assert_eq!(relay["STUNPort"], -1);
    assert_eq!(relay["ForceHTTP"], true);
    assert_ne!(addr.port(), tb.url().port().unwrap());
    assert_eq!(tb.summary()["second_region"], addr.to_string());
}

#[tokio::test]
async fn streamed_protobuf_map_has_both_regions() {
    let tb = Testbed::start(two_regions()).await.unwrap();
    let opts = DialOptions {
        headers: vec![(TOKEN_HEADER.into(), tb.token())],
        ..Default::default()
    };
    let client = TailnetClient::dial(tb.url(), &opts).await.unwrap();
    let mut maps = client.stream_derp_maps().await.unwrap();
    let map = tokio::time::timeout(T, maps.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(map.regions.len(), 2);
    assert!(map.regions[&EMBEDDED_REGION_ID].embedded_relay);
    let second = &map.regions[&SECOND_REGION_ID];
    assert!(!second.embedded_relay);
    assert_eq!(second.region_code, "second");
    let relay = second.nodes.iter().find(|n| !n.stun_only).unwrap();
    assert_eq!(
        relay.derp_port,
        i32::from(tb.second_region_addr().unwrap().port())
    );
    assert!(relay.force_http);
    let stun = second.nodes.iter().find(|n| n.stun_only).unwrap();
    assert_eq!(
        format!("{}:{}", stun.host_name, stun.stun_port),
        tb.region_stun_addr(SECOND_REGION_ID).unwrap().to_string()
    );
}

#[tokio::test]
async fn without_second_region_the_map_has_one_region() {
    let tb = Testbed::start(TestbedConfig {
        workspaces: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let map = served_map(&tb).await;
    assert_eq!(map["Regions"].as_object().unwrap().len(), 1);
    assert_eq!(tb.second_region_addr(), None);
    assert_eq!(tb.region_stun_addr(SECOND_REGION_ID), None);
    assert!(!tb.set_stun_delay(SECOND_REGION_ID, Duration::from_secs(1)));
}

/// Sends a binding request to `stun` from a fresh socket; the answer's wait.
async fn stun_round_trip(stun: SocketAddr, tx: [u8; 12]) -> Duration {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(stun).await.unwrap();
    let started = Instant::now();
    socket.send(&binding_request(tx)).await.unwrap();
    let mut buf = vec![0u8; 1500];
    let n = tokio::time::timeout(T, socket.recv(&mut buf))
        .await
        .expect("no STUN answer")
        .unwrap();
    let waited = started.elapsed();
    let (got_tx, mapped) = parse_response(&buf[..n]).unwrap();
    assert_eq!(got_tx, tx);
    assert_eq!(mapped, socket.local_addr().unwrap());
    waited
}

#[tokio::test]
async fn second_regions_published_stun_server_answers() {
    let tb = Testbed::start(two_regions()).await.unwrap();
    let (stun, _) = json_nodes(&served_map(&tb).await, SECOND_REGION_ID);
    stun_round_trip(stun, [0x10; 12]).await;
    assert_eq!(tb.region_stun_requests(SECOND_REGION_ID), 1);
    assert_eq!(tb.region_stun_requests(EMBEDDED_REGION_ID), 0);
}

#[tokio::test]
async fn delayed_stun_answers_wait_without_holding_up_other_requests() {
    let tb = Testbed::start(two_regions()).await.unwrap();
    let delay = Duration::from_millis(400);
    assert!(tb.set_stun_delay(SECOND_REGION_ID, delay));
    assert_eq!(tb.stun_delay(SECOND_REGION_ID), Some(delay));
    assert_eq!(tb.stun_delay(EMBEDDED_REGION_ID), Some(Duration::ZERO));
    let slow = tb.region_stun_addr(SECOND_REGION_ID).unwrap();
    let fast = tb.region_stun_addr(EMBEDDED_REGION_ID).unwrap();

    let waited = stun_round_trip(slow, [1; 12]).await;
    assert!(waited >= delay, "answered after {waited:?}");
    // The other region's server is not delayed.
    let waited = stun_round_trip(fast, [2; 12]).await;
    assert!(waited < delay, "answered after {waited:?}");

    // Five requests at once are answered together, not one delay after another.
    let started = Instant::now();
    let all = (0..5u8).map(|i| stun_round_trip(slow, [0x20 + i; 12]));
    let waits = futures_join_all(all).await;
    assert!(waits.iter().all(|w| *w >= delay), "{waits:?}");
    assert!(
        started.elapsed() < delay * 3,
        "serialized: {:?}",
        started.elapsed()
    );
    assert_eq!(tb.region_stun_requests(SECOND_REGION_ID), 6);

    // Changed mid-session: answers come at once again.
    assert!(tb.set_stun_delay(SECOND_REGION_ID, Duration::ZERO));
    let waited = stun_round_trip(slow, [3; 12]).await;
    assert!(waited < delay, "answered after {waited:?}");
}

/// Runs the futures concurrently on this task (no extra dependency).
async fn futures_join_all<F: std::future::Future<Output = Duration> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<Duration> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

async fn two_clients_exchange_on_the_second_region(tb: &Testbed) {
    let url = relay_url(&served_map(tb).await, SECOND_REGION_ID);
    let opts = |transport| ConnectOptions {
        transport,
        preferred: true,
        tls: tb.client_tls(),
        ..Default::default()
    };
    let mut a = connect_with(
        &url,
        &[],
        NodePrivateKey::generate(),
        opts(DerpTransport::Upgrade),
    )
    .await
    .unwrap();
    let mut b = connect_with(
        &url,
        &[],
        NodePrivateKey::generate(),
        opts(DerpTransport::WebSocket),
    )
    .await
    .unwrap();
    exchange(&mut a, &mut b).await;
    assert_eq!(tb.derp_connections(SECOND_REGION_ID), 2);
    assert_eq!(tb.derp_connections(EMBEDDED_REGION_ID), 0);
    let second = tb.region_derp(SECOND_REGION_ID).unwrap();
    assert_eq!(second.clients().await.unwrap().len(), 2);
    assert_ne!(
        second.public_key(),
        tb.region_derp(EMBEDDED_REGION_ID).unwrap().public_key(),
        "a server key of its own"
    );
    let main = tb.region_derp(EMBEDDED_REGION_ID).unwrap();
    assert!(main.clients().await.unwrap().is_empty());
}

#[tokio::test]
async fn two_clients_on_the_second_region_exchange_packets() {
    let tb = Testbed::start(two_regions()).await.unwrap();
    two_clients_exchange_on_the_second_region(&tb).await;
}

#[tokio::test]
async fn second_region_speaks_tls_when_the_testbed_does() {
    let tb = Testbed::start(TestbedConfig {
        tls: true,
        ..two_regions()
    })
    .await
    .unwrap();
    let url = relay_url(&served_map(&tb).await, SECOND_REGION_ID);
    assert_eq!(url.scheme(), "https");
    two_clients_exchange_on_the_second_region(&tb).await;
}
