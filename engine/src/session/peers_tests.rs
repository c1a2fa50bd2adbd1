use codervpn_proto::tailnet::{Agent, Workspace, WorkspaceUpdate};

use super::*;

fn id(n: u8) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[15] = n;
    b[6] = 0x01;
    b
}

fn ws(n: u8, name: &str) -> Workspace {
    Workspace {
        id: id(n).to_vec(),
        name: name.into(),
        status: 3,
    }
}

fn agent(n: u8, name: &str, w: u8) -> Agent {
    Agent {
        id: id(n).to_vec(),
        name: name.into(),
        workspace_id: id(w).to_vec(),
    }
}

fn state() -> WorkspaceState {
    WorkspaceState::new("testy", ZoneConfig::new("coder").unwrap())
}

fn initial() -> WorkspaceState {
    let mut s = state();
    s.apply(
        &WorkspaceUpdate {
            upserted_workspaces: vec![ws(1, "w1"), ws(2, "w2")],
            upserted_agents: vec![agent(11, "a1", 1), agent(21, "a2", 2)],
            ..Default::default()
        },
        true,
    )
    .unwrap();
    s
}

fn names<T>(list: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
    list.iter().map(|x| name(x).to_owned()).collect()
}

#[test]
fn upserted_agent_gets_sorted_fqdns_coder_ip_and_zero_time_handshake() {
    let s = initial();
    let u = s.snapshot();
    let a = &u.upserted_agents[0];
    assert_eq!(
        a.fqdn,
        ["w1.coder.", "a1.w1.me.coder.", "a1.w1.testy.coder."]
    );
    assert_eq!(a.ip_addrs, [coder_addr(id(11)).to_string()]);
    assert_eq!(
        a.last_handshake,
        Some(prost_types::Timestamp {
            seconds: -62_135_596_800,
            nanos: 0
        })
    );
    assert!(a.last_ping.is_none());
    assert_eq!(u.upserted_workspaces[0].id, id(1).to_vec(), "raw 16 bytes");
}

#[test]
fn fresh_state_no_change_deletes_nothing() {
    let mut s = initial();
    let out = s
        .apply(
            &WorkspaceUpdate {
                upserted_workspaces: vec![ws(1, "w1"), ws(2, "w2")],
                upserted_agents: vec![agent(11, "a1", 1), agent(21, "a2", 2)],
                ..Default::default()
            },
            true,
        )
        .unwrap();
    assert!(out.peer_update.deleted_agents.is_empty());
    assert!(out.peer_update.deleted_workspaces.is_empty());
    assert!(out.added_agents.is_empty());
}

#[test]
fn fresh_state_agent_added_is_upserted_not_deleted() {
    let mut s = initial();
    let out = s
        .apply(
            &WorkspaceUpdate {
                upserted_workspaces: vec![ws(1, "w1"), ws(2, "w2")],
                upserted_agents: vec![agent(11, "a1", 1), agent(21, "a2", 2), agent(22, "a3", 2)],
                ..Default::default()
            },
            true,
        )
        .unwrap();
    assert!(out.peer_update.deleted_agents.is_empty());
    assert_eq!(out.added_agents, [id(22)]);
}

#[test]
fn fresh_state_agent_removed_with_its_workspace_deletes_both_with_bare_fields() {
    let mut s = initial();
    let out = s
        .apply(
            &WorkspaceUpdate {
                upserted_workspaces: vec![ws(1, "w1")],
                upserted_agents: vec![agent(11, "a1", 1)],
                ..Default::default()
            },
            true,
        )
        .unwrap();
    let d = &out.peer_update.deleted_agents;
    assert_eq!(names(d, |a| &a.name), ["a2"]);
    assert_eq!(d[0].workspace_id, id(2).to_vec());
    assert!(d[0].fqdn.is_empty() && d[0].ip_addrs.is_empty() && d[0].last_handshake.is_none());
    assert_eq!(
        names(&out.peer_update.deleted_workspaces, |w| &w.name),
        ["w2"]
    );
    assert_eq!(out.peer_update.deleted_workspaces[0].status, 3);
    assert_eq!(out.removed_agents, [id(21)]);
}

#[test]
fn fresh_state_agent_removed_workspace_stays_deletes_only_the_agent() {
    let mut s = initial();
    let out = s
        .apply(
            &WorkspaceUpdate {
                upserted_workspaces: vec![ws(1, "w1"), ws(2, "w2")],
                upserted_agents: vec![agent(11, "a1", 1)],
                ..Default::default()
            },
            true,
        )
        .unwrap();
    assert_eq!(names(&out.peer_update.deleted_agents, |a| &a.name), ["a2"]);
    assert!(out.peer_update.deleted_workspaces.is_empty());
}

#[test]
fn fresh_state_from_empty_deletes_nothing() {
    let mut s = state();
    let out = s
        .apply(
            &WorkspaceUpdate {
                upserted_workspaces: vec![ws(1, "w1")],
                upserted_agents: vec![agent(11, "a1", 1)],
                ..Default::default()
            },
            true,
        )
        .unwrap();
    assert!(out.peer_update.deleted_agents.is_empty());
    assert!(out.peer_update.deleted_workspaces.is_empty());
}

#[test]
fn fresh_state_empty_update_deletes_everything() {
    let mut s = initial();
    let out = s.apply(&WorkspaceUpdate::default(), true).unwrap();
    assert_eq!(
        names(&out.peer_update.deleted_agents, |a| &a.name),
        ["a1", "a2"]
    );
    assert_eq!(
        names(&out.peer_update.deleted_workspaces, |w| &w.name),
        ["w1", "w2"]
    );
    assert!(
        s.status_update().is_none(),
        "no agents: status loop sends nothing"
    );
}

#[test]
fn fresh_state_deletes_a_missing_workspace_that_had_no_agents() {
    let mut s = state();
    s.apply(
        &WorkspaceUpdate {
            upserted_workspaces: vec![ws(1, "w1"), ws(3, "empty")],
            upserted_agents: vec![agent(11, "a1", 1)],
            ..Default::default()
        },
        true,
    )
    .unwrap();
    let out = s
        .apply(
            &WorkspaceUpdate {
                upserted_workspaces: vec![ws(1, "w1")],
                upserted_agents: vec![agent(11, "a1", 1)],
                ..Default::default()
            },
            true,
        )
        .unwrap();
    assert_eq!(
        names(&out.peer_update.deleted_workspaces, |w| &w.name),
        ["empty"]
    );
}

#[test]
fn diff_deletion_keeps_last_known_names() {
    let mut s = initial();
    let out = s
        .apply(
            &WorkspaceUpdate {
                deleted_agents: vec![agent(11, "a1", 1)],
                ..Default::default()
            },
            false,
        )
        .unwrap();
    let d = &out.peer_update.deleted_agents[0];
    assert_eq!(
        d.fqdn,
        ["w1.coder.", "a1.w1.me.coder.", "a1.w1.testy.coder."]
    );
    assert_eq!(out.removed_agents, [id(11)]);
}

#[test]
fn single_agent_shortcut_follows_the_sibling_count() {
    let mut s = initial();
    s.apply(
        &WorkspaceUpdate {
            upserted_agents: vec![agent(12, "b1", 1)],
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let snap = s.snapshot();
    let a1 = snap
        .upserted_agents
        .iter()
        .find(|a| a.name == "a1")
        .unwrap();
    assert_eq!(a1.fqdn, ["a1.w1.me.coder.", "a1.w1.testy.coder."]);
    assert!(s.zone().agent_fqdns(&id(11)).is_some());
}

#[test]
fn bad_ids_and_unknown_workspaces_are_refused_without_changing_state() {
    let mut s = initial();
    let before = s.snapshot();
    let err = s
        .apply(
            &WorkspaceUpdate {
                upserted_agents: vec![Agent {
                    id: vec![1, 2],
                    name: "x".into(),
                    workspace_id: id(1).to_vec(),
                }],
                ..Default::default()
            },
            false,
        )
        .unwrap_err();
    assert_eq!(
        err,
        UpdateError::BadId {
            what: "agent",
            len: 2
        }
    );
    let err = s
        .apply(
            &WorkspaceUpdate {
                upserted_agents: vec![agent(31, "x", 9)],
                ..Default::default()
            },
            false,
        )
        .unwrap_err();
    assert!(matches!(err, UpdateError::UnknownWorkspace { .. }), "{err}");
    assert_eq!(s.snapshot(), before);
}

#[test]
fn status_update_carries_handshake_and_retained_ping() {
    let mut s = initial();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    s.set_handshake(&id(11), t);
    s.set_ping(
        &id(11),
        LastPing {
            latency: Some(duration(Duration::from_millis(100))),
            did_p2p: false,
            preferred_derp: "Coder Region".into(),
            preferred_derp_latency: None,
        },
    );
    let u = s.status_update().unwrap();
    assert!(u.upserted_workspaces.is_empty() && u.deleted_agents.is_empty());
    let a1 = u.upserted_agents.iter().find(|a| a.name == "a1").unwrap();
    assert_eq!(a1.last_handshake.unwrap().seconds, 1_700_000_000);
    assert_eq!(
        a1.last_ping.as_ref().unwrap().preferred_derp,
        "Coder Region"
    );
}
