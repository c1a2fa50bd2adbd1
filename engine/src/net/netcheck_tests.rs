#![allow(clippy::unwrap_used)]

use super::*;

fn server(region: i64, addr: &str) -> StunServer {
    StunServer {
        region,
        addr: addr.parse().unwrap(),
    }
}

/// Runs `handle_timeout` and returns what it sent.
fn tick(n: &mut Netcheck, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut sent = Vec::new();
    n.handle_timeout(now, &mut |to, p| sent.push((to, p)));
    sent
}

fn tx_of(request: &[u8]) -> TxId {
    request[8..20].try_into().unwrap()
}

#[test]
fn a_round_asks_every_server_and_reports_the_mapped_address_and_latency() {
    let t0 = Instant::now();
    let mut n = Netcheck::default();
    let (a, b) = (server(1, "192.0.2.1:3478"), server(2, "192.0.2.2:3478"));
    n.set_servers(t0, vec![a, b]);
    let sent = tick(&mut n, t0);
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter()
            .all(|(_, p)| stun::parse_binding_request(p).is_ok())
    );
    let public: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    for (i, (to, req)) in sent.iter().enumerate() {
        let resp = stun::binding_response(tx_of(req), public);
        let at = t0 + Duration::from_millis(10 * (i as u64 + 1));
        let changed = n.handle_response(at, *to, &resp);
        assert_eq!(
            changed,
            i == 1,
            "the round ends when the last server answers"
        );
    }
    let r = n.report();
    assert_eq!(r.endpoints, vec![public]);
    let latency: BTreeMap<i64, Duration> = r.latency.iter().copied().collect();
    assert_eq!(latency[&1], Duration::from_millis(10));
    assert_eq!(latency[&2], Duration::from_millis(20));
    assert_eq!(
        n.poll_timeout(),
        Some(t0 + Duration::from_millis(20) + ROUND_INTERVAL)
    );
}

#[test]
fn responses_to_no_request_or_from_another_address_or_garbled_are_ignored() {
    let t0 = Instant::now();
    let mut n = Netcheck::default();
    let a = server(1, "192.0.2.1:3478");
    n.set_servers(t0, vec![a]);
    let sent = tick(&mut n, t0);
    let tx = tx_of(&sent[0].1);
    let public: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let forged = stun::binding_response([9; 12], public);
    assert!(!n.handle_response(t0, a.addr, &forged));
    let elsewhere = "203.0.113.9:3478".parse().unwrap();
    assert!(!n.handle_response(t0, elsewhere, &stun::binding_response(tx, public)));
    let mut truncated = stun::binding_response(tx, public);
    truncated.truncate(30);
    assert!(!n.handle_response(t0, a.addr, &truncated));
    assert_eq!(n.stats().ignored, 3);
    assert!(n.report().endpoints.is_empty());
    // The real answer still counts.
    assert!(n.handle_response(t0, a.addr, &stun::binding_response(tx, public)));
    assert_eq!(n.report().endpoints, vec![public]);
}

#[test]
fn an_unanswered_server_is_asked_again_and_a_silent_round_keeps_the_last_report() {
    let t0 = Instant::now();
    let mut n = Netcheck::new(Duration::from_secs(10));
    let a = server(1, "192.0.2.1:3478");
    n.set_servers(t0, vec![a]);
    let first = tick(&mut n, t0);
    let public: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    n.handle_response(
        t0,
        a.addr,
        &stun::binding_response(tx_of(&first[0].1), public),
    );
    assert_eq!(n.report().endpoints, vec![public]);

    // Next round: nothing answers, neither the request nor its retry.
    let t1 = t0 + Duration::from_secs(10);
    assert_eq!(tick(&mut n, t1).len(), 1);
    assert_eq!(tick(&mut n, t1 + RETRY_AFTER).len(), 1, "one retry");
    assert!(tick(&mut n, t1 + Duration::from_secs(1)).is_empty());
    tick(&mut n, t1 + ROUND_TIMEOUT);
    assert_eq!(n.stats().silent_rounds, 1);
    assert_eq!(n.report().endpoints, vec![public], "kept");
    assert_eq!(
        n.poll_timeout(),
        Some(t1 + ROUND_TIMEOUT + Duration::from_secs(10))
    );
}

#[test]
fn restun_starts_a_round_now_and_late_answers_to_the_old_one_are_ignored() {
    let t0 = Instant::now();
    let mut n = Netcheck::default();
    let a = server(1, "192.0.2.1:3478");
    n.set_servers(t0, vec![a]);
    let old = tick(&mut n, t0);
    let later = t0 + Duration::from_millis(100);
    n.restun(later);
    assert_eq!(n.poll_timeout(), Some(later));
    let new = tick(&mut n, later);
    assert_eq!(new.len(), 1);
    let public: SocketAddr = "198.51.100.8:1".parse().unwrap();
    assert!(!n.handle_response(
        later,
        a.addr,
        &stun::binding_response(tx_of(&old[0].1), public)
    ));
    assert!(n.handle_response(
        later,
        a.addr,
        &stun::binding_response(tx_of(&new[0].1), public)
    ));
}

#[test]
fn without_servers_nothing_is_sent_and_the_same_list_does_not_restart_a_round() {
    let t0 = Instant::now();
    let mut n = Netcheck::default();
    assert_eq!(n.poll_timeout(), None);
    assert!(tick(&mut n, t0).is_empty());
    let a = server(1, "[2001:db8::1]:3478");
    n.set_servers(t0, vec![a, a]);
    assert_eq!(tick(&mut n, t0).len(), 1, "duplicates collapse");
    n.set_servers(t0, vec![a]);
    assert!(
        tick(&mut n, t0).is_empty(),
        "same servers: the round goes on"
    );
}

#[test]
fn ipv4_mapped_answers_and_sources_count_as_ipv4() {
    let t0 = Instant::now();
    let mut n = Netcheck::default();
    let a = server(1, "192.0.2.1:3478");
    n.set_servers(t0, vec![a]);
    let sent = tick(&mut n, t0);
    let mapped_from: SocketAddr = "[::ffff:192.0.2.1]:3478".parse().unwrap();
    let mapped_public: SocketAddr = "[::ffff:198.51.100.7]:40000".parse().unwrap();
    let resp = stun::binding_response(tx_of(&sent[0].1), mapped_public);
    assert!(n.handle_response(t0, mapped_from, &resp));
    assert_eq!(
        n.report().endpoints,
        vec!["198.51.100.7:40000".parse().unwrap()]
    );
}

#[test]
fn latencies_are_kept_per_address_family_and_the_region_takes_the_lower() {
    let t0 = Instant::now();
    let mut n = Netcheck::default();
    let (v4, v6) = (server(7, "192.0.2.1:3478"), server(7, "[2001:db8::1]:3478"));
    n.set_servers(t0, vec![v4, v6]);
    let sent = tick(&mut n, t0);
    let public: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    for (to, req) in &sent {
        let rtt = if to.is_ipv6() { 30 } else { 20 };
        let resp = stun::binding_response(tx_of(req), public);
        n.handle_response(t0 + Duration::from_millis(rtt), *to, &resp);
    }
    let r = n.report();
    assert_eq!(r.latency_v4, vec![(7, Duration::from_millis(20))]);
    assert_eq!(r.latency_v6, vec![(7, Duration::from_millis(30))]);
    assert_eq!(r.latency, vec![(7, Duration::from_millis(20))]);
}
