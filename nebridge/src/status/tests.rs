#![allow(clippy::unwrap_used)]

use super::*;

const WS: [u8; 16] = [1; 16];
const A1: [u8; 16] = [0xa1; 16];
const A2: [u8; 16] = [0xa2; 16];

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

fn workspace(id: [u8; 16], name: &str) -> vpn::Workspace {
    vpn::Workspace {
        id: id.to_vec(),
        name: name.into(),
        status: vpn::workspace::Status::Running as i32,
    }
}

fn agent(id: [u8; 16], name: &str, ws: [u8; 16]) -> vpn::Agent {
    vpn::Agent {
        id: id.to_vec(),
        name: name.into(),
        workspace_id: ws.to_vec(),
        fqdn: vec![format!("{name}.w1.coder."), format!("{name}.w1.me.coder.")],
        ip_addrs: vec!["fd60:627a:a42b::1".into()],
        last_handshake: Some(ts(now() - Duration::from_secs(10))),
        last_ping: None,
    }
}

fn upsert(ws: Vec<vpn::Workspace>, agents: Vec<vpn::Agent>) -> vpn::PeerUpdate {
    vpn::PeerUpdate {
        upserted_workspaces: ws,
        upserted_agents: agents,
        ..Default::default()
    }
}

fn snap(m: &PeerModel) -> StatusSnapshot {
    m.snapshot(&TunnelState::Started, now())
}

#[test]
fn workspace_and_agent_in_one_update_are_linked() {
    let mut m = PeerModel::default();
    m.apply(&upsert(
        vec![workspace(WS, "W1")],
        vec![agent(A1, "main", WS)],
    ));
    let s = snap(&m);
    assert_eq!(
        s.workspaces[0].name, "w1",
        "workspace names are lower-cased"
    );
    assert_eq!(
        s.workspaces[0].agents[0].host.as_deref(),
        Some("main.w1.coder")
    );
    assert_eq!(s.invalid_agents, 0);
}

#[test]
fn agent_before_its_workspace_is_kept_aside_then_relinked() {
    let mut m = PeerModel::default();
    m.apply(&upsert(vec![], vec![agent(A1, "main", WS)]));
    assert_eq!(snap(&m).invalid_agents, 1);
    m.apply(&upsert(vec![workspace(WS, "w1")], vec![]));
    let s = snap(&m);
    assert_eq!(s.invalid_agents, 0);
    assert_eq!(s.workspaces[0].agents.len(), 1);
}

#[test]
fn agent_without_fqdn_is_invalid() {
    let mut m = PeerModel::default();
    let mut a = agent(A1, "main", WS);
    a.fqdn.clear();
    m.apply(&upsert(vec![workspace(WS, "w1")], vec![a]));
    assert_eq!(snap(&m).invalid_agents, 1);
    assert!(snap(&m).workspaces[0].agents.is_empty());
}

/// The tunnel re-sends every agent with its 5-second status update: an agent that stays
/// invalid is counted once, not once per update.
#[test]
fn an_invalid_agent_sent_again_is_counted_once() {
    let mut m = PeerModel::default();
    let mut a = agent(A1, "main", WS);
    a.fqdn.clear();
    for _ in 0..3 {
        m.apply(&upsert(vec![workspace(WS, "w1")], vec![a.clone()]));
    }
    assert_eq!(snap(&m).invalid_agents, 1);
    m.apply(&upsert(vec![], vec![agent(A1, "main", WS)]));
    let s = snap(&m);
    assert_eq!(
        s.invalid_agents, 0,
        "an agent that became valid is no longer set aside"
    );
    assert_eq!(s.workspaces[0].agents.len(), 1);
}

#[test]
fn agent_with_bad_uuid_is_invalid() {
    let mut m = PeerModel::default();
    let mut a = agent(A1, "main", WS);
    a.id = vec![1, 2];
    m.apply(&upsert(vec![workspace(WS, "w1")], vec![a]));
    assert_eq!(snap(&m).invalid_agents, 1);
}

#[test]
fn new_agent_with_same_name_replaces_older_one() {
    let mut m = PeerModel::default();
    m.apply(&upsert(
        vec![workspace(WS, "w1")],
        vec![agent(A1, "main", WS)],
    ));
    m.apply(&upsert(vec![], vec![agent(A2, "main", WS)]));
    let agents = &snap(&m).workspaces[0].agents;
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].id, uuid_text(&A2));
}

#[test]
fn deleted_workspace_takes_its_agents() {
    let mut m = PeerModel::default();
    m.apply(&upsert(
        vec![workspace(WS, "w1")],
        vec![agent(A1, "main", WS)],
    ));
    m.apply(&vpn::PeerUpdate {
        deleted_workspaces: vec![workspace(WS, "w1")],
        ..Default::default()
    });
    assert!(snap(&m).workspaces.is_empty());
    m.apply(&upsert(vec![workspace(WS, "w1")], vec![]));
    assert!(snap(&m).workspaces[0].agents.is_empty());
}

#[test]
fn deletions_apply_before_upserts() {
    let mut m = PeerModel::default();
    m.apply(&upsert(
        vec![workspace(WS, "w1")],
        vec![agent(A1, "main", WS)],
    ));
    m.apply(&vpn::PeerUpdate {
        deleted_agents: vec![agent(A1, "main", WS)],
        upserted_agents: vec![agent(A1, "main", WS)],
        ..Default::default()
    });
    assert_eq!(snap(&m).workspaces[0].agents.len(), 1);
}

#[test]
fn deleted_agent_leaves_invalid_list() {
    let mut m = PeerModel::default();
    m.apply(&upsert(vec![], vec![agent(A1, "main", WS)]));
    m.apply(&vpn::PeerUpdate {
        deleted_agents: vec![agent(A1, "main", WS)],
        ..Default::default()
    });
    assert_eq!(snap(&m).invalid_agents, 0);
}

#[test]
fn status_connecting_without_handshake() {
    assert_eq!(agent_status(None, None, now()), AgentStatus::Connecting);
}

#[test]
fn go_zero_time_handshake_is_connecting() {
    let mut m = PeerModel::default();
    let mut a = agent(A1, "main", WS);
    a.last_handshake = Some(prost_types::Timestamp {
        seconds: -62_135_596_800,
        nanos: 0,
    });
    m.apply(&upsert(vec![workspace(WS, "w1")], vec![a]));
    assert_eq!(
        snap(&m).workspaces[0].agents[0].status,
        AgentStatus::Connecting
    );
}

#[test]
fn status_red_after_five_minutes_without_handshake() {
    let hs = now() - Duration::from_secs(301);
    assert_eq!(
        agent_status(Some(hs), Some(Duration::from_millis(5)), now()),
        AgentStatus::NoRecentHandshake
    );
    let hs = now() - Duration::from_secs(300);
    assert_eq!(agent_status(Some(hs), None, now()), AgentStatus::Okay);
}

#[test]
fn status_green_without_ping_data() {
    assert_eq!(agent_status(Some(now()), None, now()), AgentStatus::Okay);
}

#[test]
fn status_green_below_150ms_yellow_from_150ms() {
    let hs = Some(now());
    let ms = |n| Some(Duration::from_millis(n));
    assert_eq!(agent_status(hs, ms(149), now()), AgentStatus::Okay);
    assert_eq!(agent_status(hs, ms(150), now()), AgentStatus::HighLatency);
}

#[test]
fn publisher_publishes_only_changes() {
    let mut p = StatusPublisher::new();
    let mut rx = p.subscribe();
    rx.borrow_and_update();
    p.set_state(TunnelState::Stopped, now());
    assert!(!rx.has_changed().unwrap());
    p.set_state(TunnelState::Started, now());
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().state, "started");
}

#[test]
fn access_allows_root_owner_and_group_members_only() {
    let access = Access {
        owner_uid: 0,
        group: Some(1000),
    };
    assert!(allowed(access, 0, 0, &[]));
    assert!(allowed(access, 1001, 1000, &[]));
    assert!(allowed(access, 1001, 1001, &[27, 1000]));
    assert!(!allowed(access, 65534, 65534, &[]));
    let no_group = Access {
        owner_uid: 500,
        group: None,
    };
    assert!(allowed(no_group, 500, 500, &[]));
    assert!(!allowed(no_group, 501, 0, &[0]));
}

fn table_snapshot() -> StatusSnapshot {
    let mut m = PeerModel::default();
    let mut fast = agent(A1, "main", WS);
    fast.last_ping = Some(vpn::LastPing {
        latency: Some(Duration::from_millis(12).try_into().unwrap()),
        did_p2p: true,
        preferred_derp: "New York".into(),
        preferred_derp_latency: None,
    });
    let mut slow = agent(A2, "gpu", WS);
    slow.last_ping = Some(vpn::LastPing {
        latency: Some(Duration::from_millis(212).try_into().unwrap()),
        did_p2p: false,
        preferred_derp: "Frankfurt".into(),
        preferred_derp_latency: None,
    });
    m.apply(&upsert(
        vec![workspace(WS, "w1"), workspace([2; 16], "idle")],
        vec![fast, slow],
    ));
    m.snapshot(&TunnelState::Started, now())
}

#[test]
fn table_lists_agents_with_status_latency_and_path() {
    let table = format_table(&table_snapshot());
    let want = "\
Coder Connect: started
WORKSPACE  AGENT  STATUS        LATENCY  PATH            HANDSHAKE  HOST
idle       -      off           -        -               -          (running)
w1         gpu    high latency  212 ms   DERP Frankfurt  10s ago    gpu.w1.coder
w1         main   okay          12 ms    p2p             10s ago    main.w1.coder
";
    assert_eq!(table, want);
}

#[test]
fn table_shows_failure_and_empty_state() {
    let s = PeerModel::default().snapshot(&TunnelState::Failed("boom".into()), now());
    assert_eq!(
        format_table(&s),
        "Coder Connect: failed (boom)\nNo workspaces.\n"
    );
}

#[test]
fn table_counts_invalid_agents() {
    let mut m = PeerModel::default();
    m.apply(&upsert(vec![], vec![agent(A1, "main", WS)]));
    let t = format_table(&m.snapshot(&TunnelState::Started, now()));
    assert!(
        t.ends_with("1 invalid agent(s) (unknown workspace, no FQDN or bad id) not shown.\n"),
        "{t}"
    );
}

#[test]
fn snapshot_round_trips_through_a_json_line() {
    let s = table_snapshot();
    let line = serde_json::to_string(&s).unwrap();
    assert_eq!(parse_line(Path::new("x"), &line).unwrap(), s);
}

#[test]
fn refusal_line_becomes_refused_error() {
    let err = parse_line(Path::new("/s"), "{\"error\":\"permission denied\"}\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "status socket /s: refused: permission denied"
    );
}
