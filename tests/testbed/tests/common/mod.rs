//! What the testbed's test files share: a manager speaking the CoderVPN protocol to an
//! in-process tunnel with the real connector and waits on what it reports; the served DERP
//! map; a packet exchange between two DERP clients.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use codervpn_engine::embedded;
use codervpn_engine::net::derp::{ClientEvent, DerpConnection, DerpEvent};
use codervpn_engine::session::join::{JoinOptions, TailnetConnector};
use codervpn_proto::manager::ManagerClient;
use codervpn_proto::vpn;
use codervpn_testbed::agent::HTTP_PORT;
use codervpn_testbed::{TOKEN_HEADER, Testbed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub const T: Duration = Duration::from_secs(20);

pub struct Manager {
    pub client: ManagerClient,
    pub settings: mpsc::UnboundedReceiver<vpn::NetworkSettingsRequest>,
    pub updates: embedded::PeerUpdates,
}

/// A tunnel with the real connector, and a manager that accepts every network settings
/// request and collects what it was sent (the embedded engine's own manager side).
pub async fn tunnel(connector: TailnetConnector) -> Manager {
    let (set_tx, settings) = mpsc::unbounded_channel();
    let on_settings: embedded::SettingsHandler = Box::new(move |s| {
        let _ = set_tx.send(s.clone());
        Box::pin(async { Ok(()) })
    });
    let m = embedded::start(connector, on_settings).await.unwrap();
    Manager {
        client: m.client,
        settings,
        updates: m.updates,
    }
}

pub fn start_request(tb: &Testbed) -> vpn::StartRequest {
    vpn::StartRequest {
        tunnel_file_descriptor: -1,
        coder_url: tb.url().to_string(),
        api_token: tb.token(),
        ..Default::default()
    }
}

/// A started tunnel (userspace) against `tb`, after its first PeerUpdate.
pub async fn started(tb: &Testbed) -> (Manager, TailnetConnector, vpn::PeerUpdate) {
    started_with(tb, JoinOptions::default()).await
}

/// [`started`] with join options.
pub async fn started_with(
    tb: &Testbed,
    opts: JoinOptions,
) -> (Manager, TailnetConnector, vpn::PeerUpdate) {
    let connector = TailnetConnector::new(opts);
    let mut m = tunnel(connector.clone()).await;
    let r = tokio::time::timeout(T, m.client.start(start_request(tb)))
        .await
        .unwrap()
        .unwrap();
    assert!(r.success, "{}", r.error_message);
    let first = tokio::time::timeout(T, m.updates.recv())
        .await
        .unwrap()
        .unwrap();
    (m, connector, first)
}

/// `GET /` from an agent's HTTP service; retried until `T` passes.
pub async fn fetch_page(connector: &TailnetConnector, ip: &str) -> String {
    let stack = connector.stack().unwrap();
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let attempt = async {
            let mut s = stack
                .connect((ip, HTTP_PORT).into())
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut page = String::new();
            s.read_to_string(&mut page)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(page)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(page)) if page.starts_with("HTTP/1.1 200") => return page,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no page from {ip}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Waits for a PeerUpdate that satisfies `want`.
pub async fn wait_update(
    m: &mut Manager,
    want: impl Fn(&vpn::PeerUpdate) -> bool,
) -> vpn::PeerUpdate {
    tokio::time::timeout(T, async {
        loop {
            let u = m.updates.recv().await.unwrap();
            if want(&u) {
                return u;
            }
        }
    })
    .await
    .expect("the expected PeerUpdate never came")
}

/// The DERP map (tailcfg JSON) from `/api/v2/workspaceagents/connection`, trusting the
/// testbed's CA when it serves TLS.
pub async fn served_map(tb: &Testbed) -> serde_json::Value {
    let mut client = reqwest::Client::builder();
    if let Some(pem) = tb.ca_pem() {
        client =
            client.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    let info: serde_json::Value = client
        .build()
        .unwrap()
        .get(tb.url().join("api/v2/workspaceagents/connection").unwrap())
        .header(TOKEN_HEADER, tb.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    info["derp_map"].clone()
}

/// The next packet a DERP connection delivers (other events skipped), within 10 s.
pub async fn next_packet(events: &mut mpsc::Receiver<DerpEvent>) -> Bytes {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        if let DerpEvent::Relay(ClientEvent::Packet { data, .. }) = e {
            return data;
        }
    }
}

/// `a` sends to `b` until the relay knows `b` (it learns keys at the handshake), then `b`
/// answers.
pub async fn exchange(a: &mut DerpConnection, b: &mut DerpConnection) {
    let mut got = None;
    for _ in 0..50 {
        a.handle
            .send(b.handle.public_key(), Bytes::from_static(b"to b"))
            .await
            .unwrap();
        if let Ok(p) =
            tokio::time::timeout(Duration::from_millis(100), next_packet(&mut b.events)).await
        {
            got = Some(p);
            break;
        }
    }
    assert_eq!(got.unwrap(), Bytes::from_static(b"to b"));
    b.handle
        .send(a.handle.public_key(), Bytes::from_static(b"to a"))
        .await
        .unwrap();
    assert_eq!(
        next_packet(&mut a.events).await,
        Bytes::from_static(b"to a")
    );
}
