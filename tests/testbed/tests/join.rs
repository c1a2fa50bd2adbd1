//! The engine joins the testbed exactly as it would a Coder deployment: a manager speaks
//! the CoderVPN protocol over a socket pair to an in-process tunnel whose connector is
//! the real one (REST, tailnet websocket, DERP, WireGuard to simulated agents on smoltcp).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use codervpn_engine::session::join::{JoinOptions, TailnetConnector};
use codervpn_engine::tunnel::{TunnelOptions, serve};
use codervpn_proto::manager::ManagerClient;
use codervpn_proto::vpn::{self, manager_message, tunnel_message};
use codervpn_proto::{Connection, Incoming, ManagerSide, TunnelSide, VersionList};
use codervpn_testbed::agent::{ECHO_PORT, HTTP_PORT, agent_page};
use codervpn_testbed::{Testbed, TestbedConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(20);

struct Manager {
    client: ManagerClient,
    settings: mpsc::UnboundedReceiver<vpn::NetworkSettingsRequest>,
    updates: mpsc::UnboundedReceiver<vpn::PeerUpdate>,
}

/// A tunnel with the real connector, and a manager that accepts every network settings
/// request and collects what it was sent.
async fn tunnel(connector: TailnetConnector) -> Manager {
    let (a, b) = UnixStream::pair().unwrap();
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    tokio::spawn(async move {
        let conn = Connection::<TunnelSide>::handshake(br, bw, VersionList::current())
            .await
            .unwrap();
        serve(
            conn,
            TunnelOptions::new(Arc::new(connector)),
            std::future::pending(),
        )
        .await
    });
    let conn = Connection::<ManagerSide>::handshake(ar, aw, VersionList::current())
        .await
        .unwrap();
    let (handle, mut incoming) = conn.into_parts();
    let (set_tx, settings) = mpsc::unbounded_channel();
    let (up_tx, updates) = mpsc::unbounded_channel();
    let h = handle.clone();
    tokio::spawn(async move {
        while let Some(m) = incoming.recv().await {
            match m {
                Incoming::Request { id, msg } => {
                    if let Some(tunnel_message::Msg::NetworkSettings(s)) = msg.msg {
                        let _ = set_tx.send(s);
                        let reply = vpn::ManagerMessage {
                            rpc: None,
                            msg: Some(manager_message::Msg::NetworkSettings(
                                vpn::NetworkSettingsResponse {
                                    success: true,
                                    error_message: String::new(),
                                },
                            )),
                        };
                        let _ = h.reply(id, reply).await;
                    }
                }
                Incoming::OneWay(msg) => {
                    if let Some(tunnel_message::Msg::PeerUpdate(u)) = msg.msg {
                        let _ = up_tx.send(u);
                    }
                }
            }
        }
    });
    Manager {
        client: ManagerClient::new(handle),
        settings,
        updates,
    }
}

fn start_request(tb: &Testbed) -> vpn::StartRequest {
    vpn::StartRequest {
        tunnel_file_descriptor: -1,
        coder_url: tb.url().to_string(),
        api_token: tb.token(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_joins_and_reports_every_agent_then_reaches_one_through_derp() {
    let tb = Testbed::start(TestbedConfig {
        workspaces: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let connector = TailnetConnector::new(JoinOptions::default());
    let mut m = tunnel(connector.clone()).await;
    let r = tokio::time::timeout(T, m.client.start(start_request(&tb)))
        .await
        .unwrap()
        .unwrap();
    assert!(r.success, "{}", r.error_message);

    let router = m.settings.recv().await.unwrap();
    let v6 = router.ipv6_settings.unwrap();
    assert!(v6.addrs[0].starts_with("fd60:627a:a42b:"), "{:?}", v6.addrs);
    assert_eq!(router.mtu, 1280);
    let dns = m.settings.recv().await.unwrap().dns_settings.unwrap();
    assert_eq!(dns.match_domains, ["coder", "coderlan"]);

    let first = tokio::time::timeout(T, m.updates.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.upserted_workspaces.len(), 2);
    let want = tb.deployment().agent_summaries();
    let mut got: Vec<(String, Vec<String>)> = first
        .upserted_agents
        .iter()
        .map(|a| (a.name.clone(), a.fqdn.clone()))
        .collect();
    got.sort();
    let mut expected: Vec<(String, Vec<String>)> = want
        .iter()
        .map(|a| (a.name.clone(), a.fqdn.clone()))
        .collect();
    expected.sort();
    assert_eq!(got, expected);

    // The agent's HTTP page and 10 MB through its echo service, over WireGuard via DERP.
    let stack = connector.stack().unwrap();
    let agent = &want[0];
    let agent_ip: std::net::IpAddr = agent.ip.parse().unwrap();
    let mut http = tokio::time::timeout(T, stack.connect((agent_ip, HTTP_PORT).into()))
        .await
        .unwrap()
        .unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    tokio::time::timeout(T, http.read_to_string(&mut page))
        .await
        .unwrap()
        .unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(
        page.ends_with(&agent_page(&agent.workspace, &agent.name)),
        "{page}"
    );

    let echo = tokio::time::timeout(T, stack.connect((agent_ip, ECHO_PORT).into()))
        .await
        .unwrap()
        .unwrap();
    let data: Vec<u8> = (0..10_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let (mut rd, mut wr) = tokio::io::split(echo);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "10 MB came back altered");

    let snap = m.client.get_peer_update().await.unwrap();
    assert_eq!(snap.upserted_agents.len(), 2);
    let stop = tokio::time::timeout(T, m.client.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(stop.success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_fails_start_with_a_message_that_says_so() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let mut m = tunnel(TailnetConnector::default()).await;
    let mut req = start_request(&tb);
    req.api_token = "not-the-token".into();
    let r = m.client.start(req).await.unwrap();
    assert!(!r.success);
    assert!(
        r.error_message.contains("session token was rejected by"),
        "{}",
        r.error_message
    );
    assert!(m.settings.try_recv().is_err(), "nothing applied");
}
