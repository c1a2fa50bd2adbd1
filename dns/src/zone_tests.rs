use super::*;
use crate::addr::parse_uuid;

/// `testUUID(a, b)` of coder/coder `tailnet/controllers_test.go`: bytes 6 and 7 set.
pub(crate) fn test_uuid(a: u8, b: u8) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[6] = a;
    id[7] = b;
    id
}

pub(crate) fn agent(id: [u8; 16], name: &str, workspace: &str, owner: &str) -> AgentInfo {
    AgentInfo {
        id,
        name: name.into(),
        workspace: workspace.into(),
        owner: owner.into(),
    }
}

fn ip(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

fn host(zone: &Zone, name: &str) -> Vec<Ipv6Addr> {
    match zone.lookup(name) {
        Lookup::Host(addrs) => addrs.to_vec(),
        other => panic!("{name}: expected a host, got {other:?}"),
    }
}

fn config(suffix: &str) -> ZoneConfig {
    ZoneConfig::new(suffix).unwrap()
}

#[test]
fn agent_is_named_under_me_and_under_its_owner() {
    let zone = Zone::new(
        config("coder"),
        &[agent(test_uuid(1, 1), "agnt", "wrk", "rootbeer")],
    );
    let addr = vec![ip("fd60:627a:a42b:101::")];
    // tailnet.md §10.1 examples.
    assert_eq!(host(&zone, "agnt.wrk.me.coder."), addr);
    assert_eq!(host(&zone, "agnt.wrk.rootbeer.coder."), addr);
    assert_eq!(host(&zone, "wrk.coder."), addr);
}

#[test]
fn owner_named_me_gives_each_name_once() {
    let a = agent(test_uuid(1, 1), "a", "w", "me");
    let zone = Zone::new(config("coder"), std::slice::from_ref(&a));
    assert_eq!(host(&zone, "a.w.me.coder.").len(), 1);
    assert_eq!(
        zone.agent_fqdns(&a.id).unwrap(),
        ["w.coder.", "a.w.me.coder."]
    );
}

#[test]
fn workspace_shortcut_exists_only_while_workspace_has_one_agent() {
    let a1 = agent(test_uuid(1, 1), "a1", "w", "testy");
    let a2 = agent(test_uuid(1, 2), "a2", "w", "testy");

    let two = Zone::new(config("coder"), &[a1.clone(), a2.clone()]);
    assert_eq!(two.lookup("w.coder."), Lookup::NxDomain);
    assert_eq!(host(&two, "a1.w.me.coder."), [coder_addr(a1.id)]);
    assert_eq!(host(&two, "a2.w.me.coder."), [coder_addr(a2.id)]);
    assert_eq!(
        two.agent_fqdns(&a1.id).unwrap(),
        ["a1.w.me.coder.", "a1.w.testy.coder."]
    );

    // One agent goes away: the shortcut appears, pointing at the one left.
    let one = Zone::new(config("coder"), std::slice::from_ref(&a2));
    assert_eq!(host(&one, "w.coder."), [coder_addr(a2.id)]);
    assert_eq!(one.lookup("a1.w.me.coder."), Lookup::NxDomain);

    // A second agent comes back: the shortcut goes again.
    let again = Zone::new(config("coder"), &[a2, a1]);
    assert_eq!(again.lookup("w.coder."), Lookup::NxDomain);
}

#[test]
fn replaced_agent_takes_over_the_workspace_shortcut() {
    // Upstream: TestTunnelAllWorkspaceUpdatesController_DeleteAgent.
    let before = Zone::new(
        config("coder"),
        &[agent(test_uuid(1, 1), "w1a1", "w1", "testy")],
    );
    assert_eq!(host(&before, "w1.coder."), [ip("fd60:627a:a42b:101::")]);
    let after = Zone::new(
        config("coder"),
        &[agent(test_uuid(1, 2), "w1a2", "w1", "testy")],
    );
    let want: Vec<(String, Vec<Ipv6Addr>)> = vec![
        (
            "is.coder--connect--enabled--right--now.coder.".into(),
            vec![CODER_DNS_ADDR],
        ),
        ("w1.coder.".into(), vec![ip("fd60:627a:a42b:102::")]),
        ("w1a2.w1.me.coder.".into(), vec![ip("fd60:627a:a42b:102::")]),
        (
            "w1a2.w1.testy.coder.".into(),
            vec![ip("fd60:627a:a42b:102::")],
        ),
    ];
    assert_eq!(after.hosts(), want);
}

#[test]
fn workspace_shortcut_counts_agents_per_owner_and_workspace() {
    // Same workspace name, different owners: two single-agent workspaces.
    let zone = Zone::new(
        config("coder"),
        &[
            agent(test_uuid(1, 1), "a", "dev", "alice"),
            agent(test_uuid(2, 1), "a", "dev", "bob"),
        ],
    );
    assert_eq!(
        host(&zone, "a.dev.alice.coder."),
        [coder_addr(test_uuid(1, 1))]
    );
    assert_eq!(
        host(&zone, "a.dev.bob.coder."),
        [coder_addr(test_uuid(2, 1))]
    );
    // Both claim `dev.coder.` and `a.dev.me.coder.`: both addresses are served.
    assert_eq!(host(&zone, "dev.coder.").len(), 2);
    assert_eq!(host(&zone, "a.dev.me.coder.").len(), 2);
}

#[test]
fn same_agent_listed_twice_counts_once() {
    let a = agent(test_uuid(1, 1), "a", "w", "o");
    let zone = Zone::new(config("coder"), &[a.clone(), a]);
    assert_eq!(host(&zone, "w.coder."), [coder_addr(test_uuid(1, 1))]);
}

#[test]
fn suffix_float_names() {
    // tailnet.md §10.1, from upstream tests.
    let zone = Zone::new(
        config("float"),
        &[agent(test_uuid(3, 1), "agnt", "wrk", "rootbeer")],
    );
    let addr = [ip("fd60:627a:a42b:301::")];
    assert_eq!(host(&zone, "wrk.float."), addr);
    assert_eq!(host(&zone, "agnt.wrk.me.float."), addr);
    assert_eq!(host(&zone, "agnt.wrk.rootbeer.float."), addr);
    assert_eq!(zone.lookup("wrk.coder."), Lookup::Refused);
}

#[test]
fn upstream_initial_update_names_with_suffix_mctest() {
    // Upstream: TestTunnelAllWorkspaceUpdatesController_Initial (owner "testy", suffix
    // "mctest", w1 with one agent, w2 with two).
    let zone = Zone::new(
        config("mctest").without_aliases(),
        &[
            agent(test_uuid(1, 1), "w1a1", "w1", "testy"),
            agent(test_uuid(2, 1), "w2a1", "w2", "testy"),
            agent(test_uuid(2, 2), "w2a2", "w2", "testy"),
        ],
    );
    let w1a1 = ip("fd60:627a:a42b:0101::");
    let w2a1 = ip("fd60:627a:a42b:0201::");
    let w2a2 = ip("fd60:627a:a42b:0202::");
    let mut want: Vec<(String, Vec<Ipv6Addr>)> = vec![
        ("w1a1.w1.me.mctest.".into(), vec![w1a1]),
        ("w2a1.w2.me.mctest.".into(), vec![w2a1]),
        ("w2a2.w2.me.mctest.".into(), vec![w2a2]),
        ("w1a1.w1.testy.mctest.".into(), vec![w1a1]),
        ("w2a1.w2.testy.mctest.".into(), vec![w2a1]),
        ("w2a2.w2.testy.mctest.".into(), vec![w2a2]),
        ("w1.mctest.".into(), vec![w1a1]),
        (
            "is.coder--connect--enabled--right--now.mctest.".into(),
            vec![CODER_DNS_ADDR],
        ),
    ];
    want.sort();
    assert_eq!(zone.hosts(), want);
    assert_eq!(
        zone.agent_fqdns(&test_uuid(1, 1)).unwrap(),
        ["w1.mctest.", "w1a1.w1.me.mctest.", "w1a1.w1.testy.mctest."]
    );
}

#[test]
fn agent_address_comes_from_its_uuid() {
    let id = parse_uuid("00000000-0000-0101-0000-000000000000").unwrap();
    let zone = Zone::new(config("mctest"), &[agent(id, "w1a1", "w1", "testy")]);
    for name in ["w1a1.w1.me.mctest.", "w1a1.w1.testy.mctest.", "w1.mctest."] {
        assert_eq!(host(&zone, name), [ip("fd60:627a:a42b:101::")], "{name}");
    }
}

#[test]
fn coder_connect_marker_resolves_to_dns_address() {
    let zone = Zone::empty(config("coder"));
    assert_eq!(
        host(&zone, "is.coder--connect--enabled--right--now.coder."),
        [ip("fd60:627a:a42b::53")]
    );
}

#[test]
fn peer_update_fqdns_sorted_by_length_then_bytes() {
    let a = agent(test_uuid(1, 1), "w1a1", "w1", "testy");
    let zone = Zone::new(config("coder"), std::slice::from_ref(&a));
    assert_eq!(
        zone.agent_fqdns(&a.id).unwrap(),
        ["w1.coder.", "w1a1.w1.me.coder.", "w1a1.w1.testy.coder."]
    );
    assert_eq!(
        agent_fqdns(&a, 1, "coder").unwrap(),
        ["w1.coder.", "w1a1.w1.me.coder.", "w1a1.w1.testy.coder."]
    );
    // Equal lengths fall back to byte order.
    let b = agent(test_uuid(1, 2), "b", "w", "ab");
    assert_eq!(agent_fqdns(&b, 2, "x").unwrap(), ["b.w.ab.x.", "b.w.me.x."]);
    assert_eq!(zone.agent_fqdns(&test_uuid(9, 9)), None);
}

#[test]
fn names_are_lower_cased() {
    let a = agent(test_uuid(1, 1), "Main", "DevBox", "Alice");
    let zone = Zone::new(config("Coder"), std::slice::from_ref(&a));
    assert_eq!(
        zone.agent_fqdns(&a.id).unwrap(),
        [
            "devbox.coder.",
            "main.devbox.me.coder.",
            "main.devbox.alice.coder."
        ]
    );
    assert_eq!(host(&zone, "MAIN.devbox.ALICE.coder").len(), 1);
}

#[test]
fn coderlan_alias_serves_the_same_names() {
    let zone = Zone::new(config("coder"), &[agent(test_uuid(1, 1), "a", "w", "o")]);
    assert_eq!(host(&zone, "a.w.o.coderlan."), host(&zone, "a.w.o.coder."));
    assert_eq!(host(&zone, "w.coderlan."), host(&zone, "w.coder."));
    // PeerUpdate names use the deployment suffix only.
    assert!(
        zone.agent_fqdns(&test_uuid(1, 1))
            .unwrap()
            .iter()
            .all(|n| n.ends_with(".coder."))
    );
}

#[test]
fn alias_turned_off_refuses_coderlan_names() {
    let zone = Zone::new(
        config("coder").without_aliases(),
        &[agent(test_uuid(1, 1), "a", "w", "o")],
    );
    assert_eq!(zone.lookup("w.coderlan."), Lookup::Refused);
    assert_eq!(zone.lookup("coderlan."), Lookup::Refused);
}

#[test]
fn unknown_name_under_suffix_is_nxdomain_and_outside_is_refused() {
    let zone = Zone::new(config("coder"), &[agent(test_uuid(1, 1), "a", "w", "o")]);
    assert_eq!(zone.lookup("nope.coder."), Lookup::NxDomain);
    assert_eq!(zone.lookup("b.w.me.coder."), Lookup::NxDomain);
    assert_eq!(zone.lookup("example.com."), Lookup::Refused);
    assert_eq!(zone.lookup("coder.example."), Lookup::Refused);
    assert_eq!(zone.lookup("."), Lookup::Refused);
}

#[test]
fn apex_and_empty_non_terminals_exist_without_records() {
    // RFC 8020: an NXDOMAIN for `w.me.coder.` would tell resolvers that nothing below it
    // exists either, hiding `a.w.me.coder.`.
    let zone = Zone::new(config("coder"), &[agent(test_uuid(1, 1), "a", "w", "o")]);
    for name in [
        "coder.",
        "me.coder.",
        "w.me.coder.",
        "o.coder.",
        "w.o.coder.",
        "coder--connect--enabled--right--now.coder.",
    ] {
        assert_eq!(zone.lookup(name), Lookup::NoData, "{name}");
    }
}

#[test]
fn unusable_labels_leave_the_agent_out_and_say_why() {
    let good = agent(test_uuid(1, 1), "a", "w", "o");
    let dotted = agent(test_uuid(2, 1), "x.y", "w2", "o");
    let empty = agent(test_uuid(3, 1), "a", "", "o");
    let zone = Zone::new(config("coder"), &[good, dotted, empty]);
    assert_eq!(host(&zone, "a.w.o.coder.").len(), 1);
    assert_eq!(zone.agent_fqdns(&test_uuid(2, 1)), None);
    assert_eq!(zone.rejected().len(), 2);
    let text = zone.rejected()[0].to_string();
    assert!(
        text.contains("00000000-0000-0201-0000-000000000000") && text.contains("x.y"),
        "{text}"
    );
}

#[test]
fn names_longer_than_253_characters_are_left_out() {
    let long = "x".repeat(63);
    let a = agent(test_uuid(1, 1), &long, &long, &long);
    let zone = Zone::new(config(&"s".repeat(63)).without_aliases(), &[a]);
    // `<63>.<63>.me.<63>` fits; `<63>.<63>.<63>.<63>` (255 characters) does not.
    assert_eq!(zone.agent_fqdns(&test_uuid(1, 1)).unwrap().len(), 2);
    assert!(matches!(zone.rejected(), [NameError::TooLong { .. }]));
}

#[test]
fn serial_follows_contents() {
    let a = [agent(test_uuid(1, 1), "a", "w", "o")];
    let b = [agent(test_uuid(1, 2), "a", "w", "o")];
    let za = Zone::new(config("coder"), &a);
    assert_eq!(za.serial(), Zone::new(config("coder"), &a).serial());
    assert_ne!(za.serial(), Zone::new(config("coder"), &b).serial());
}

#[test]
fn uuid_displays_hyphenated() {
    assert_eq!(
        Uuid(test_uuid(1, 1)).to_string(),
        "00000000-0000-0101-0000-000000000000"
    );
}
