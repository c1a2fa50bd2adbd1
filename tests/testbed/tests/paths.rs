//! Direct paths and DERP regions as the engine uses them against the testbed: the path to an
//! agent goes direct over UDP and survives a wake, `disable_direct_connections` keeps it on
//! DERP (and the status pings say so), and the home DERP region follows the closer relay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use codervpn_engine::session::join::JoinOptions;
use codervpn_engine::session::join::TailnetConnector;
use codervpn_engine::session::join::owner::OwnerTimings;
use codervpn_testbed::agent::agent_page;
use codervpn_testbed::{EMBEDDED_REGION_NAME, Testbed, TestbedConfig};
use common::{Manager, fetch_page, started_with, wait_update};

/// A testbed with one agent and a session joined to it, both advertising loopback
/// endpoints (one host), with status updates every `status`.
async fn on_loopback(
    disable_direct: bool,
    status: Duration,
) -> (Testbed, Manager, TailnetConnector) {
    let tb = Testbed::start(TestbedConfig {
        workspaces: 1,
        loopback_endpoints: true,
        disable_direct_connections: disable_direct,
        ..Default::default()
    })
    .await
    .unwrap();
    let opts = JoinOptions {
        loopback_endpoints: true,
        timings: OwnerTimings {
            status_interval: status,
            ..OwnerTimings::default()
        },
        ..JoinOptions::default()
    };
    let (m, connector, _) = started_with(&tb, opts).await;
    (tb, m, connector)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_path_goes_direct_over_udp_and_carries_traffic_without_the_relay() {
    let (tb, mut m, connector) = on_loopback(false, Duration::from_millis(500)).await;
    let agent = &tb.deployment().agent_summaries()[0];
    fetch_page(&connector, &agent.ip).await;

    let u = wait_update(&mut m, |u| {
        u.upserted_agents
            .iter()
            .any(|a| a.last_ping.as_ref().is_some_and(|p| p.did_p2p))
    })
    .await;
    let ping = u.upserted_agents[0].last_ping.clone().unwrap();
    assert_eq!(ping.preferred_derp, EMBEDDED_REGION_NAME);
    assert!(ping.latency.is_some(), "a direct path has a latency");

    // The relay now drops everything: the page can only come over the direct path.
    tb.set_relay_loss(1.0);
    let page = fetch_page(&connector, &agent.ip).await;
    assert!(page.ends_with(&agent_page(&agent.workspace, &agent.name)));

    // Wake: the UDP socket is closed and bound again; the direct path comes back on the
    // new socket (the relay still drops everything).
    m.client.wake().await.unwrap();
    let page = fetch_page(&connector, &agent.ip).await;
    assert!(page.ends_with(&agent_page(&agent.workspace, &agent.name)));
    tb.set_relay_loss(0.0);
    assert!(m.client.stop().await.unwrap().success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_direct_connections_keep_the_agent_on_derp() {
    let (tb, mut m, connector) = on_loopback(true, Duration::from_millis(300)).await;
    let agent = &tb.deployment().agent_summaries()[0];
    fetch_page(&connector, &agent.ip).await;
    // Long enough for a direct path to be found had it been allowed (pings go out at once);
    // the status pings cross DERP and say so.
    let mut relayed = None;
    for _ in 0..8 {
        let u = wait_update(&mut m, |u| !u.upserted_agents.is_empty()).await;
        for ping in u
            .upserted_agents
            .iter()
            .filter_map(|a| a.last_ping.as_ref())
        {
            assert!(
                !ping.did_p2p,
                "no direct path when direct connections are disabled: {u:?}"
            );
            relayed = Some(ping.clone());
        }
    }
    let ping = relayed.expect("a ping through DERP within 8 status updates");
    assert_eq!(ping.preferred_derp, codervpn_testbed::EMBEDDED_REGION_NAME);
    assert!(
        ping.latency.is_some_and(|l| l.seconds == 0 && l.nanos > 0),
        "{ping:?}"
    );
    assert!(ping.preferred_derp_latency.is_some(), "{ping:?}");
    assert!(m.client.stop().await.unwrap().success);
}

/// Join options under which only the latest STUN round counts for the home region
/// (`home_history` 0; the 5-minute history is unit-tested in `netinfo`), and every wake
/// starts a round at once (no 5 s rebind debounce; unit-tested in `rebind`).
fn latest_round_only() -> JoinOptions {
    JoinOptions {
        timings: OwnerTimings {
            home_history: Duration::ZERO,
            rebind_debounce: Duration::ZERO,
            ..OwnerTimings::default()
        },
        ..JoinOptions::default()
    }
}

/// The home region the client last published (`update_self.preferred_derp`), waited for
/// until it is `want` (10 s at most).
/// The client's diagnostics, once checked that its connection to `region`'s relay is up.
async fn snapshot_with_relay_up(
    connector: &TailnetConnector,
    region: i64,
) -> codervpn_engine::session::diag::EngineSnapshot {
    let snap = connector.diagnostics().snapshot().await.unwrap();
    assert!(
        snap.wg
            .derp
            .iter()
            .any(|(id, s)| *id == region && s.connected),
        "no connection to region {region}'s relay: {:?}",
        snap.wg.derp
    );
    snap
}

async fn wait_home(tb: &Testbed, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let homes: Vec<i64> = tb
            .coordinator()
            .client_nodes()
            .iter()
            .map(|n| i64::from(n.preferred_derp))
            .collect();
        if homes == [want] {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "home region {homes:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two DERP regions; whichever STUN answers 100 ms late is clearly farther. The home
/// region follows the faster one (the join-time choice is a coin toss between two relays
/// on loopback), moves when the latencies swap and a wake re-STUNs, and the agent (homed
/// in region 999) stays reachable after each move. Only the latest round counts here
/// (`home_history` 0); the 5-minute history is unit-tested in `netinfo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_region_follows_the_clearly_closer_relay_and_traffic_keeps_flowing() {
    use codervpn_testbed::{EMBEDDED_REGION_ID, SECOND_REGION_ID};
    let tb = Testbed::start(TestbedConfig {
        workspaces: 1,
        second_region: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let slow = Duration::from_millis(100);
    assert!(tb.set_stun_delay(SECOND_REGION_ID, slow));
    let (m, connector, _) = started_with(&tb, latest_round_only()).await;
    let agent = tb.deployment().agent_summaries()[0].clone();
    wait_home(&tb, EMBEDDED_REGION_ID).await;
    fetch_page(&connector, &agent.ip).await;

    for (home, other) in [
        (SECOND_REGION_ID, EMBEDDED_REGION_ID),
        (EMBEDDED_REGION_ID, SECOND_REGION_ID),
    ] {
        tb.set_stun_delay(home, Duration::ZERO);
        tb.set_stun_delay(other, slow);
        m.client.wake().await.unwrap();
        wait_home(&tb, home).await;
        let page = fetch_page(&connector, &agent.ip).await;
        assert!(page.ends_with(&agent_page(&agent.workspace, &agent.name)));
        // The old home stays connected (region 1000 has no agent: nothing else keeps it).
        snapshot_with_relay_up(&connector, other).await;
    }
    assert!(
        tb.derp_connections(SECOND_REGION_ID) >= 1,
        "the client dialled region 1000"
    );
    assert!(m.client.stop().await.unwrap().success);
}

/// The DERP map scores region 1000 ×1000 (`HomeParams.RegionScore`): its STUN answers at
/// once and region 999's only after 60 ms, yet the client's home stays 999 — at join (the
/// relay probe order) and after the STUN rounds — and it never dials region 1000. Without
/// the score it moves (the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_scored_up_by_the_server_is_not_chosen_as_home_though_faster() {
    use codervpn_testbed::{EMBEDDED_REGION_ID, SECOND_REGION_ID};
    let tb = Testbed::start(TestbedConfig {
        workspaces: 1,
        second_region: true,
        region_scores: vec![(SECOND_REGION_ID, 1000.0)],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(tb.set_stun_delay(EMBEDDED_REGION_ID, Duration::from_millis(60)));
    let (m, connector, _) = started_with(&tb, latest_round_only()).await;
    let mut seen = None;
    for round in 0..2 {
        // A published node carrying both regions' STUN latencies of a new round, the delayed
        // one ≥ 60 ms, was sent after the home choice of that round.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let node = loop {
            let nodes = tb.coordinator().client_nodes();
            let stunned = nodes.iter().find(|n| {
                let l = |k: &str| n.derp_latency.get(k).copied();
                l("999-v4").is_some_and(|s| s >= 0.06 && Some(s) != seen)
                    && l("1000-v4").is_some_and(|s| s < 0.06)
            });
            if let Some(n) = stunned {
                break n.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no node with both STUN latencies: {nodes:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            i64::from(node.preferred_derp),
            EMBEDDED_REGION_ID,
            "{node:?}"
        );
        seen = node.derp_latency.get("999-v4").copied();
        // Wake: another STUN round at once.
        m.client.wake().await.unwrap();
    }
    assert_eq!(
        tb.derp_connections(SECOND_REGION_ID),
        0,
        "region 1000 was dialled"
    );
    let agent = tb.deployment().agent_summaries()[0].clone();
    fetch_page(&connector, &agent.ip).await;
    assert!(m.client.stop().await.unwrap().success);
}

/// Home is region 1000 (region 999 scored ×1000), the agent is homed in the embedded region
/// 999 and direct connections are off: the client must dial 999's relay at the access URL
/// after the tailnet's own DERP map arrives, and traffic crosses it. (A map update once
/// pointed the embedded relay at the home region's first node — a STUN-only node on port
/// 443 — and the agent was unreachable.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_relay_is_reached_when_home_is_another_region() {
    use codervpn_testbed::{EMBEDDED_REGION_ID, SECOND_REGION_ID};
    let tb = homed_away_from_the_embedded_relay().await;
    let (m, connector, _) = started_with(&tb, latest_round_only()).await;
    wait_home(&tb, SECOND_REGION_ID).await;
    let agent = tb.deployment().agent_summaries()[0].clone();
    let page = fetch_page(&connector, &agent.ip).await;
    assert!(page.ends_with(&agent_page(&agent.workspace, &agent.name)));
    assert!(
        tb.derp_connections(EMBEDDED_REGION_ID) >= 1,
        "the client never reached region 999"
    );
    let snap = snapshot_with_relay_up(&connector, EMBEDDED_REGION_ID).await;
    assert_eq!(snap.wg.home_region, Some(SECOND_REGION_ID));
    assert!(snap.wg.traffic.derp_rx.packets > 0 && snap.wg.traffic.udp_rx.packets == 0);
    assert!(m.client.stop().await.unwrap().success);
}

/// One workspace, direct connections off, two regions with the embedded one (999) scored
/// out of the home choice: the client homes in 1000 and reaches 999 only for its agents.
async fn homed_away_from_the_embedded_relay() -> Testbed {
    use codervpn_testbed::EMBEDDED_REGION_ID;
    Testbed::start(TestbedConfig {
        workspaces: 1,
        second_region: true,
        disable_direct_connections: true,
        region_scores: vec![(EMBEDDED_REGION_ID, 1000.0)],
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The session token reaches only the relay on the Coder URL's origin (region 999, the
/// embedded one); region 1000 (another port: another origin, as a third party's relay
/// would be) gets the manager's extra header but never the token (issue #17, finding 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_token_goes_only_to_the_relay_on_the_coder_origin() {
    use codervpn_testbed::{EMBEDDED_REGION_ID, SECOND_REGION_ID, TOKEN_HEADER};
    let tb = homed_away_from_the_embedded_relay().await;
    let connector = TailnetConnector::new(latest_round_only());
    let m = common::tunnel(connector.clone()).await;
    let mut req = common::start_request(&tb);
    req.headers
        .push(codervpn_proto::vpn::start_request::Header {
            name: "X-Corp-Access".into(),
            value: "granted".into(),
        });
    let r = tokio::time::timeout(Duration::from_secs(10), m.client.start(req))
        .await
        .unwrap()
        .unwrap();
    assert!(r.success, "{}", r.error_message);
    wait_home(&tb, SECOND_REGION_ID).await;
    let agent = tb.deployment().agent_summaries()[0].clone();
    fetch_page(&connector, &agent.ip).await;

    // The client's requests carry its extra header; the simulated agents' (homed in 999)
    // carry nothing.
    let token = TOKEN_HEADER.to_ascii_lowercase();
    let extra = "x-corp-access".to_owned();
    let clients = |region| -> Vec<Vec<String>> {
        tb.derp_request_headers(region)
            .into_iter()
            .filter(|names| names.contains(&extra))
            .collect()
    };
    let (embedded, second) = (clients(EMBEDDED_REGION_ID), clients(SECOND_REGION_ID));
    assert!(
        !embedded.is_empty() && !second.is_empty(),
        "the client dialled both relays"
    );
    for names in &embedded {
        assert!(names.contains(&token), "999 without the token: {names:?}");
    }
    for names in tb.derp_request_headers(SECOND_REGION_ID) {
        assert!(
            !names.contains(&token),
            "the token reached region 1000: {names:?}"
        );
    }
    assert!(m.client.stop().await.unwrap().success);
}
