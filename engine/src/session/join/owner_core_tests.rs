//! The owner fed by hand: events and time in, actions out — no tasks, no channels.

use std::collections::HashMap;
use std::time::Duration;

use codervpn_dns::ZoneConfig;
use codervpn_proto::tailnet::coordinate_response::PeerUpdate as CoordPeerUpdate;
use codervpn_proto::tailnet::derp_map::Region as DerpRegion;
use codervpn_proto::tailnet::{Agent, Workspace, WorkspaceUpdate};

use super::*;
use crate::net::wg::PeerStats;

const HOME: i64 = 1;
const OTHER: i64 = 2;

fn id(n: u8) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[15] = n;
    b[6] = 0x01;
    b
}

fn region(id: i64) -> DerpRegion {
    DerpRegion {
        region_id: id,
        region_name: format!("r{id}"),
        ..Default::default()
    }
}

fn core(now: Instant) -> OwnerCore {
    let derp_map = DerpMap {
        regions: HashMap::from([(HOME, region(HOME)), (OTHER, region(OTHER))]),
        ..Default::default()
    };
    let me = NodeInfo {
        id: 1,
        key: [1; 32],
        disco: [2; 32],
        preferred_derp: HOME,
        derp_latency: Vec::new(),
        addresses: vec!["fd60:627a:a42b::1/128".parse().unwrap()],
        endpoints: Vec::new(),
    };
    let mut c = OwnerCore::new(
        WorkspaceState::new("testy", ZoneConfig::new("coder").unwrap()),
        me,
        derp_map,
        HOME,
        OwnerTimings::default(),
        Some(EndpointSource { loopback: false }),
        RegionLatencies::new([(HOME, Duration::from_millis(5))]),
    );
    // The STUN servers of the first map.
    assert!(matches!(c.poll_action(), Some(Action::ResolveStun(_))));
    let _ = now;
    c
}

fn drain(c: &mut OwnerCore) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

/// An agent's node, homed in `derp`.
fn node(n: u8, derp: i64) -> Node {
    NodeInfo {
        id: i64::from(n),
        key: [n; 32],
        disco: [n + 100; 32],
        preferred_derp: derp,
        derp_latency: Vec::new(),
        addresses: vec![format!("fd60:627a:a42b::{n}/128").parse().unwrap()],
        endpoints: vec![format!("192.0.2.{n}:41641").parse().unwrap()],
    }
    .to_proto()
}

fn coordinate(n: u8, kind: Kind, node: Option<Node>) -> CoordinateResponse {
    CoordinateResponse {
        peer_updates: vec![CoordPeerUpdate {
            id: id(n).to_vec(),
            kind: kind as i32,
            node,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn workspace_with_agent(n: u8) -> WorkspaceUpdate {
    WorkspaceUpdate {
        upserted_workspaces: vec![Workspace {
            id: id(100).to_vec(),
            name: "w".into(),
            status: 3,
        }],
        upserted_agents: vec![Agent {
            id: id(n).to_vec(),
            name: format!("a{n}"),
            workspace_id: id(100).to_vec(),
        }],
        ..Default::default()
    }
}

fn wg_commands(actions: &[Action]) -> Vec<&WgCommand> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Wg(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn a_connect_announces_us_and_a_new_agent_gets_a_tunnel_and_a_peer_update() {
    let now = Instant::now();
    let mut c = core(now);
    c.handle_connected();
    let a = drain(&mut c);
    assert!(
        matches!(&a[..], [Action::Coordinate(r)] if r.update_self.is_some()),
        "{a:?}"
    );
    c.handle_workspace(&workspace_with_agent(7), true);
    let a = drain(&mut c);
    assert!(matches!(a[0], Action::Zone(_)), "{a:?}");
    assert!(matches!(a[1], Action::Snapshot(_)));
    assert!(
        matches!(&a[2], Action::Coordinate(r) if r.add_tunnel.as_ref().is_some_and(|t| t.id == id(7)))
    );
    assert!(matches!(&a[3], Action::PeerUpdate(u) if u.upserted_agents.len() == 1));
}

#[test]
fn requests_are_dropped_while_the_tailnet_is_down() {
    let now = Instant::now();
    let mut c = core(now);
    c.handle_workspace(&workspace_with_agent(7), true);
    let a = drain(&mut c);
    assert!(
        !a.iter().any(|a| matches!(a, Action::Coordinate(_))),
        "{a:?}"
    );
    // The next connect announces the agent it knows.
    c.handle_connected();
    let a = drain(&mut c);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Coordinate(r) if r.add_tunnel.is_some()))
    );
}

#[test]
fn a_node_is_programmed_on_ready_for_handshake_and_its_region_dialled() {
    let now = Instant::now();
    let mut c = core(now);
    c.handle_coordinate(now, coordinate(7, Kind::Node, Some(node(7, OTHER))));
    assert!(
        drain(&mut c).is_empty(),
        "nothing before READY_FOR_HANDSHAKE"
    );
    c.handle_coordinate(now, coordinate(7, Kind::ReadyForHandshake, None));
    let a = drain(&mut c);
    let cmds = wg_commands(&a);
    assert!(
        matches!(cmds[0], WgCommand::UpsertRelayedPeer { config, derp_region: OTHER } if config.public_key == [7; 32]),
        "{a:?}"
    );
    assert!(
        matches!(cmds[1], WgCommand::SetPeerDisco { key, endpoints, .. } if *key == [7; 32] && endpoints.len() == 1)
    );
    assert!(a.iter().any(|a| matches!(
        a,
        Action::Dial {
            region: OTHER,
            home: false
        }
    )));
    // A second agent in the same region does not dial it again.
    c.handle_coordinate(now, coordinate(8, Kind::Node, Some(node(8, OTHER))));
    c.handle_coordinate(now, coordinate(8, Kind::ReadyForHandshake, None));
    assert!(
        !drain(&mut c)
            .iter()
            .any(|a| matches!(a, Action::Dial { .. }))
    );
}

#[test]
fn without_ready_for_handshake_the_peer_is_programmed_after_the_timeout() {
    let now = Instant::now();
    let mut c = core(now);
    c.handle_coordinate(now, coordinate(7, Kind::Node, Some(node(7, HOME))));
    c.handle_housekeeping(now + Duration::from_secs(1));
    assert!(drain(&mut c).is_empty());
    c.handle_housekeeping(now + Duration::from_secs(5));
    let a = drain(&mut c);
    assert!(
        matches!(
            wg_commands(&a)[..],
            [
                WgCommand::UpsertRelayedPeer { .. },
                WgCommand::SetPeerDisco { .. }
            ]
        ),
        "{a:?}"
    );
}

#[test]
fn a_new_key_for_an_agent_replaces_its_peer_and_a_disconnect_removes_it() {
    let now = Instant::now();
    let mut c = core(now);
    c.handle_coordinate(now, coordinate(7, Kind::Node, Some(node(7, HOME))));
    c.handle_coordinate(now, coordinate(7, Kind::ReadyForHandshake, None));
    drain(&mut c);
    let mut restarted = node(7, HOME);
    restarted.key = node(9, HOME).key;
    c.handle_coordinate(now, coordinate(7, Kind::Node, Some(restarted)));
    let a = drain(&mut c);
    assert!(
        matches!(wg_commands(&a)[..], [WgCommand::RemovePeer(k)] if *k == [7; 32]),
        "{a:?}"
    );
    c.handle_coordinate(now, coordinate(7, Kind::Disconnected, None));
    let a = drain(&mut c);
    assert!(
        matches!(wg_commands(&a)[..], [WgCommand::RemovePeer(k)] if *k == [9; 32]),
        "{a:?}"
    );
}

#[test]
fn a_lost_agent_without_a_handshake_goes_after_the_lost_timeout() {
    let now = Instant::now();
    let mut c = core(now);
    c.handle_coordinate(now, coordinate(7, Kind::Node, Some(node(7, HOME))));
    c.handle_coordinate(now, coordinate(7, Kind::ReadyForHandshake, None));
    c.handle_coordinate(now, coordinate(7, Kind::Lost, None));
    drain(&mut c);
    let stats = |since| WgStats {
        peers: vec![PeerStats {
            public_key: [7; 32],
            allowed_ips: Vec::new(),
            endpoint: None,
            since_last_handshake: since,
            tx_bytes: 0,
            rx_bytes: 0,
            path: None,
            relay_latency: None,
            derp_region: None,
        }],
        ..Default::default()
    };
    let wall = SystemTime::now();
    c.handle_stats(now + Duration::from_secs(60), wall, stats(None));
    assert!(wg_commands(&drain(&mut c)).is_empty(), "not yet");
    let later = now + Duration::from_secs(15 * 60);
    c.handle_stats(later, wall, stats(Some(Duration::from_secs(60))));
    assert!(
        wg_commands(&drain(&mut c)).is_empty(),
        "a recent handshake keeps it"
    );
    c.handle_stats(later, wall, stats(None));
    let a = drain(&mut c);
    assert!(
        matches!(wg_commands(&a)[..], [WgCommand::RemovePeer(k)] if *k == [7; 32]),
        "{a:?}"
    );
}

#[test]
fn a_wake_rebinds_and_probes_once_within_the_debounce() {
    let now = Instant::now();
    let mut c = core(now);
    c.handle_wake(now);
    let a = drain(&mut c);
    assert!(matches!(a[0], Action::ProbeTailnet), "{a:?}");
    // Then the endpoints gathered again (this host's addresses).
    assert!(
        matches!(wg_commands(&a).first(), Some(WgCommand::Rebind)),
        "{a:?}"
    );
    c.handle_wake(now + Duration::from_secs(1));
    assert!(drain(&mut c).is_empty());
}

#[test]
fn the_status_tick_fetches_stats_and_stop_says_disconnect() {
    let now = Instant::now();
    let mut c = core(now);
    c.handle_status_tick();
    assert!(matches!(drain(&mut c)[..], [Action::FetchStats]));
    c.handle_connected();
    drain(&mut c);
    c.handle_stop();
    assert!(matches!(&drain(&mut c)[..], [Action::Coordinate(r)] if r.disconnect.is_some()));
}

#[test]
fn a_removed_agent_gets_remove_tunnel_its_peer_goes_and_the_manager_hears() {
    let now = Instant::now();
    let mut c = core(now);
    c.handle_connected();
    c.handle_workspace(&workspace_with_agent(7), true);
    c.handle_coordinate(now, coordinate(7, Kind::Node, Some(node(7, HOME))));
    c.handle_coordinate(now, coordinate(7, Kind::ReadyForHandshake, None));
    drain(&mut c);
    let gone = WorkspaceUpdate {
        deleted_agents: workspace_with_agent(7).upserted_agents,
        ..Default::default()
    };
    c.handle_workspace(&gone, false);
    let a = drain(&mut c);
    assert!(
        a.iter().any(|a| matches!(a, Action::Coordinate(r) if r.remove_tunnel.as_ref().is_some_and(|t| t.id == id(7)))),
        "{a:?}"
    );
    assert!(
        matches!(wg_commands(&a)[..], [WgCommand::RemovePeer(k)] if *k == [7; 32]),
        "{a:?}"
    );
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::PeerUpdate(u) if u.deleted_agents.len() == 1))
    );
}
