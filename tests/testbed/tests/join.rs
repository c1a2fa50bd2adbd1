//! The engine joins the testbed exactly as it would a Coder deployment: a manager speaks
//! the CoderVPN protocol over a socket pair to an in-process tunnel whose connector is
//! the real one (REST, tailnet websocket, DERP, WireGuard to simulated agents on smoltcp).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use codervpn_engine::session::join::{JoinOptions, TailnetConnector};
use codervpn_proto::vpn;
use codervpn_testbed::agent::{ECHO_PORT, HTTP_PORT, agent_page};
use codervpn_testbed::{Testbed, TestbedConfig};
use common::{T, fetch_page, start_request, started, started_with, tunnel, wait_update};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_joins_and_reports_every_agent_then_reaches_one_through_derp() {
    let tb = Testbed::start(TestbedConfig {
        workspaces: 2,
        // DERP only: on one host a direct path would carry the traffic.
        disable_direct_connections: true,
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
    // The message names the host, and never the token.
    let host = tb.url().host_str().unwrap().to_owned();
    assert!(
        r.error_message.contains("session token was rejected by")
            && r.error_message.contains(&host),
        "{}",
        r.error_message
    );
    assert!(
        !r.error_message.contains("not-the-token"),
        "{}",
        r.error_message
    );
    assert!(m.settings.try_recv().is_err(), "nothing applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_coordinator_resumes_with_the_token_and_loses_no_update() {
    let tb = Testbed::start(TestbedConfig {
        workspaces: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let (mut m, connector, _) = started(&tb).await;
    let agents = tb.deployment().agent_summaries();
    let d = tb.deployment();
    let gone = d.workspaces[0].agents[0].id.0.to_vec();
    let kept = d.workspaces[1].agents[0].id.0.to_vec();
    assert_eq!(d.workspaces[0].name, agents[0].workspace);
    fetch_page(&connector, &agents[1].ip).await;
    // The controller has its first resume token (issued in process: the answer is in flight
    // for microseconds, not the 300 ms this used to sleep).
    tokio::time::timeout(T, async {
        while tb.resume_tokens_issued() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("no resume token issued");
    tokio::time::sleep(Duration::from_millis(20)).await;
    tb.drop_tailnet_connections();
    // A change made while the client is (probably) still reconnecting; faults.rs has the
    // deterministic case (the change made while the coordinator refuses connections).
    assert!(tb.set_workspace_running(&agents[0].workspace, false));
    let u = wait_update(&mut m, |u| u.deleted_agents.iter().any(|a| a.id == gone)).await;
    assert!(u.deleted_agents.iter().all(|a| a.id != kept));
    // The deletion may also have arrived as a diff just before the drop took effect; either
    // way the redial must present the resume token.
    tokio::time::timeout(T, async {
        while tb.resumed_connections() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the redial never presented its resume token");
    // The other agent is still reachable.
    fetch_page(&connector, &agents[1].ip).await;
    assert!(m.client.stop().await.unwrap().success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_resumes_after_the_derp_relay_restarts() {
    let tb = Testbed::start(TestbedConfig {
        workspaces: 1,
        // DERP only: on one host a direct path would carry the traffic.
        disable_direct_connections: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let (m, connector, _) = started(&tb).await;
    let agent = &tb.deployment().agent_summaries()[0];
    fetch_page(&connector, &agent.ip).await;
    tb.restart_derp().await;
    let page = fetch_page(&connector, &agent.ip).await;
    assert!(page.ends_with(&agent_page(&agent.workspace, &agent.name)));
    assert!(m.client.stop().await.unwrap().success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_then_started_workspace_is_deleted_then_upserted_and_reachable() {
    let tb = Testbed::start(TestbedConfig {
        workspaces: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let (mut m, connector, _) = started(&tb).await;
    let before = tb.deployment().agent_summaries();
    let ws = before[0].workspace.clone();
    tb.set_workspace_running(&ws, false);
    let u = wait_update(&mut m, |u| !u.deleted_agents.is_empty()).await;
    assert_eq!(u.deleted_agents[0].name, before[0].name);
    assert_eq!(
        u.upserted_workspaces[0].status,
        vpn::workspace::Status::Stopped as i32
    );
    tb.set_workspace_running(&ws, true);
    let u = wait_update(&mut m, |u| !u.upserted_agents.is_empty()).await;
    assert_eq!(
        u.upserted_workspaces[0].status,
        vpn::workspace::Status::Running as i32
    );
    let agent = tb
        .deployment()
        .agent_summaries()
        .into_iter()
        .find(|a| a.workspace == ws)
        .unwrap();
    assert_eq!(
        u.upserted_agents[0].ip_addrs,
        std::slice::from_ref(&agent.ip)
    );
    fetch_page(&connector, &agent.ip).await;
    assert!(m.client.stop().await.unwrap().success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_over_https_trusting_the_testbed_ca_serves_an_agent_page_through_derp_over_tls() {
    let tb = Testbed::start(TestbedConfig {
        workspaces: 1,
        tls: true,
        // DERP only: on one host a direct path would carry the traffic.
        disable_direct_connections: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(tb.url().scheme(), "https");
    let trust =
        codervpn_engine::transport::tls::client_config_with_ca_file(tb.ca_file().unwrap()).unwrap();
    let opts = JoinOptions {
        tls: Some(trust),
        ..JoinOptions::default()
    };
    let (m, connector, first) = started_with(&tb, opts).await;
    assert_eq!(first.upserted_agents.len(), 1);
    // The testbed speaks only TLS: the page came through WireGuard over DERP over TLS.
    let agent = &tb.deployment().agent_summaries()[0];
    let page = fetch_page(&connector, &agent.ip).await;
    assert!(page.ends_with(&agent_page(&agent.workspace, &agent.name)));
    assert!(m.client.stop().await.unwrap().success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_the_ca_fails_start_naming_the_host_and_the_certificate_problem() {
    let tb = Testbed::start(TestbedConfig {
        tls: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut m = tunnel(TailnetConnector::default()).await;
    let r = tokio::time::timeout(T, m.client.start(start_request(&tb)))
        .await
        .unwrap()
        .unwrap();
    assert!(!r.success);
    let host = format!("127.0.0.1:{}", tb.url().port().unwrap());
    assert!(r.error_message.contains(&host), "{}", r.error_message);
    assert!(
        r.error_message
            .contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        r.error_message
    );
    assert!(m.settings.try_recv().is_err(), "nothing applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_complete_intact_when_the_relay_drops_packets() {
    let tb = Testbed::start(TestbedConfig {
        workspaces: 1,
        // DERP only: on one host a direct path would carry the traffic.
        disable_direct_connections: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let (m, connector, _) = started(&tb).await;
    let agent = &tb.deployment().agent_summaries()[0];
    fetch_page(&connector, &agent.ip).await;
    tb.set_relay_loss(0.05);
    let stack = connector.stack().unwrap();
    let ip: std::net::IpAddr = agent.ip.parse().unwrap();
    let echo = stack.connect((ip, ECHO_PORT).into()).await.unwrap();
    let data: Vec<u8> = (0..64_000u32).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = tokio::io::split(echo);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(90), rd.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(
        back == data,
        "altered under loss ({} bytes back)",
        back.len()
    );
    assert!(
        tb.derp().dropped_by_fault() > 0,
        "the fault dropped nothing"
    );
    tb.set_relay_loss(0.0);
    assert!(m.client.stop().await.unwrap().success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_gives_up_at_its_deadline_with_the_last_dial_error() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    tb.set_tailnet_unavailable(true);
    let connector = TailnetConnector::new(JoinOptions {
        first_dial_deadline: Duration::from_secs(2),
        ..Default::default()
    });
    let m = tunnel(connector).await;
    let r = m.client.start(start_request(&tb)).await.unwrap();
    assert!(!r.success);
    assert!(
        r.error_message.contains("within 2s; last error:"),
        "{}",
        r.error_message
    );
    assert!(r.error_message.contains("HTTP 503"), "{}", r.error_message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_waits_out_a_transient_tailnet_failure() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    tb.set_tailnet_unavailable(true);
    let mut m = tunnel(TailnetConnector::default()).await;
    let start = tokio::spawn({
        let client = m.client.clone();
        let req = start_request(&tb);
        async move { client.start(req).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !start.is_finished(),
        "start replied while no dial had succeeded"
    );
    tb.set_tailnet_unavailable(false);
    let r = tokio::time::timeout(T, start)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(r.success, "{}", r.error_message);
    tokio::time::timeout(T, m.updates.recv())
        .await
        .unwrap()
        .unwrap();
}

/// Checklist #34 and #64: REST calls in order, then the tailnet websocket with
/// `version=2.3`, then DERP — and every one of them carries the session token, the
/// StartRequest's literal header and `Coder-Desktop-Telemetry`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_in_upstream_order_each_with_token_literal_headers_and_telemetry() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    assert!(tb.agents_ready(T).await, "agents never registered");
    let before = tb.requests().len();
    let mut m = tunnel(TailnetConnector::default()).await;
    let mut req = start_request(&tb);
    req.headers = vec![vpn::start_request::Header {
        name: "X-Test-Header".into(),
        value: "test".into(),
    }];
    req.device_id = "device001".into();
    req.device_os = "Linux".into();
    req.coder_desktop_version = "0.0.0-test".into();
    assert!(m.client.start(req).await.unwrap().success);
    tokio::time::timeout(T, m.updates.recv())
        .await
        .unwrap()
        .unwrap();
    let seen: Vec<_> = tb.requests().split_off(before);
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        &paths[..3],
        [
            "/api/v2/users/me",
            "/api/v2/workspaceagents/connection",
            "/api/v2/tailnet"
        ],
        "{paths:?}"
    );
    assert!(seen[2].query.contains("version=2.3"), "{:?}", seen[2]);
    assert!(
        paths.contains(&"/derp"),
        "no DERP connection among {paths:?}"
    );
    for r in &seen {
        for h in [
            "coder-session-token",
            "x-test-header",
            "coder-desktop-telemetry",
        ] {
            assert!(
                r.header_names.iter().any(|n| n == h),
                "{} lacks {h}: {:?}",
                r.path,
                r.header_names
            );
        }
    }
    assert!(m.client.stop().await.unwrap().success);
}

/// In userspace mode only Coder's prefix goes through the tunnel: a connect to an address
/// outside it — the internet, `[::1]` — fails at once as unreachable instead of hanging
/// until the connect timeout, or being answered by the stack itself (issue #17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_outside_the_coder_prefix_fail_at_once() {
    use codervpn_engine::device::userspace::ConnectError;
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let (m, connector, _) = started(&tb).await;
    let stack = connector.stack().unwrap();
    for to in ["[2001:db8::1]:80", "[::1]:80", "192.0.2.1:80"] {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(T, stack.connect(to.parse().unwrap())).await;
        match r {
            Ok(Err(ConnectError::Unreachable { .. })) => {}
            Ok(Err(e)) => panic!("{to}: {e}"),
            Ok(Ok(_)) => panic!("{to}: connected"),
            Err(_) => panic!("{to}: still connecting after {T:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{to}: {:?}",
            started.elapsed()
        );
    }
    // The agents stay reachable.
    let agent = tb.deployment().agent_summaries()[0].clone();
    let page = fetch_page(&connector, &agent.ip).await;
    assert!(page.ends_with(&agent_page(&agent.workspace, &agent.name)));
    assert!(m.client.stop().await.unwrap().success);
}
