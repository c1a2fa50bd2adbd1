//! Path state machine with a fake clock (rules from coder/tailscale `magicsock/endpoint.go`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::codec::{Ping, Pong, TxId};
use super::path::*;

const A: &str = "198.51.100.1:41641";
const B: &str = "10.0.0.2:41641";
/// A ping from the peer (old clients send no node key).
const PING: Ping = Ping {
    tx_id: [4; 12],
    node_key: None,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Drains the transmits; returns the pings as (to, tx id).
fn drain(p: &mut PeerPaths) -> (Vec<(SocketAddr, TxId)>, Vec<Transmit>) {
    let mut pings = Vec::new();
    let mut others = Vec::new();
    while let Some(t) = p.poll_transmit() {
        match t {
            Transmit::Ping { to, tx_id } => pings.push((to, tx_id)),
            other => others.push(other),
        }
    }
    (pings, others)
}

fn tx_for(pings: &[(SocketAddr, TxId)], to: &str) -> TxId {
    let to = addr(to);
    pings
        .iter()
        .find(|(a, _)| *a == to)
        .map(|(_, tx)| *tx)
        .unwrap_or_else(|| panic!("no ping to {to} in {pings:?}"))
}

fn pong(p: &mut PeerPaths, now: Instant, to: &str, tx_id: TxId) -> bool {
    p.handle_pong(
        now,
        Via::Udp(addr(to)),
        &Pong {
            tx_id,
            src: addr("203.0.113.1:1"),
        },
    )
}

/// A peer with default config whose node lists `eps` at `t0`; returns the first pings.
fn started(eps: &[&str]) -> (Instant, PeerPaths, Vec<(SocketAddr, TxId)>) {
    let t0 = Instant::now();
    let mut p = PeerPaths::new(PathConfig::default());
    let eps: Vec<SocketAddr> = eps.iter().map(|e| addr(e)).collect();
    p.set_node_endpoints(t0, &eps);
    let (pings, _) = drain(&mut p);
    (t0, p, pings)
}

/// Started with A alone, A confirmed 20 ms later (returns that instant too).
fn direct_on_a() -> (Instant, PeerPaths, Instant) {
    let (t0, mut p, pings) = started(&[A]);
    let t = t0 + ms(20);
    assert!(pong(&mut p, t, A, tx_for(&pings, A)));
    (t0, p, t)
}

/// Advances the fake clock to `until`, firing timeouts as they fall due; returns the pings.
fn run_until(p: &mut PeerPaths, now: &mut Instant, until: Instant) -> Vec<(SocketAddr, TxId)> {
    let mut pings = Vec::new();
    while let Some(t) = p.poll_timeout().filter(|t| *t <= until) {
        *now = t.max(*now);
        p.handle_timeout(*now);
        pings.extend(drain(p).0);
    }
    *now = until;
    p.handle_timeout(*now);
    pings.extend(drain(p).0);
    pings
}

#[test]
fn new_endpoints_are_pinged_with_a_call_me_maybe_through_derp() {
    let t0 = Instant::now();
    let mut p = PeerPaths::new(PathConfig::default());
    p.set_node_endpoints(t0, &[addr(A), addr(B)]);
    let (pings, others) = drain(&mut p);
    assert_eq!(pings.len(), 2);
    assert_eq!(others, vec![Transmit::CallMeMaybe]);
    assert_eq!(p.best_path(t0), Path::Derp);
}

#[test]
fn pong_upgrades_to_direct_with_its_latency() {
    let (t0, mut p, pings) = started(&[A]);
    assert!(pong(&mut p, t0 + ms(40), A, tx_for(&pings, A)));
    let direct = Path::Direct {
        addr: addr(A),
        latency: ms(40),
    };
    assert_eq!(p.best_path(t0 + ms(40)), direct);
    assert_eq!(p.poll_path_change(), Some(direct));
    assert_eq!(p.poll_path_change(), None);
}

#[test]
fn lowest_latency_endpoint_wins_and_a_slower_pong_does_not_displace_it() {
    let (t0, mut p, pings) = started(&[A, B]);
    assert!(pong(&mut p, t0 + ms(10), B, tx_for(&pings, B)));
    assert!(pong(&mut p, t0 + ms(30), A, tx_for(&pings, A)));
    assert_eq!(
        p.best_path(t0 + ms(30)),
        Path::Direct {
            addr: addr(B),
            latency: ms(10)
        }
    );
}

/// A is confirmed with `a_ms`; then a call-me-maybe brings C, which answers in `c_ms`.
fn best_after_a_then_c(a_ms: u64, c_ms: u64) -> Path {
    const C: &str = "198.51.100.2:41641";
    let (t0, mut p, pings) = started(&[A]);
    pong(&mut p, t0 + ms(a_ms), A, tx_for(&pings, A));
    let t1 = t0 + ms(500);
    p.handle_call_me_maybe(t1, &[addr(C)]);
    let (pings, _) = drain(&mut p);
    pong(&mut p, t1 + ms(c_ms), C, tx_for(&pings, C));
    p.best_path(t1 + ms(c_ms))
}

#[test]
fn faster_endpoint_replaces_a_slower_best() {
    assert_eq!(
        best_after_a_then_c(50, 10),
        Path::Direct {
            addr: addr("198.51.100.2:41641"),
            latency: ms(10)
        }
    );
}

#[test]
fn near_equal_latency_does_not_switch() {
    // magicsock betterAddr: an improvement of 1 % or less keeps the current address.
    assert!(matches!(
        best_after_a_then_c(100, 99),
        Path::Direct { addr: a, .. } if a == addr(A)
    ));
}

#[test]
fn pong_loss_falls_back_to_derp_after_the_trust_window() {
    let (t0, mut p, t_pong) = direct_on_a();
    let _ = p.poll_path_change();
    let mut now = t_pong;
    // No pongs from here on; heartbeats go unanswered.
    // trustUDPAddrDuration = 6.5 s after the last pong (upstream trusts through the instant
    // itself; here the trust ends at it).
    run_until(&mut p, &mut now, t_pong + ms(6499));
    assert!(matches!(p.best_path(now), Path::Direct { .. }));
    run_until(&mut p, &mut now, t_pong + ms(6500));
    assert_eq!(p.best_path(now), Path::Derp);
    assert_eq!(p.poll_path_change(), Some(Path::Derp));
    // The first unanswered heartbeat (sent at 3 s) times out 5 s later.
    run_until(&mut p, &mut now, t0 + ms(8000));
    assert_eq!(p.stats().ping_timeouts, 1);
}

#[test]
fn heartbeat_pongs_keep_a_direct_path() {
    let (t0, mut p, mut now) = direct_on_a();
    for _ in 0..10 {
        let until = now + Duration::from_secs(3);
        let pings = run_until(&mut p, &mut now, until);
        for (to, tx) in pings {
            assert_eq!(to, addr(A));
            pong(&mut p, now, A, tx);
        }
        assert!(
            matches!(p.best_path(now), Path::Direct { .. }),
            "at {:?}",
            now - t0
        );
    }
}

#[test]
fn direct_path_returns_when_pongs_come_back() {
    let (t0, mut p, mut now) = direct_on_a();
    run_until(&mut p, &mut now, t0 + Duration::from_secs(10));
    assert_eq!(p.best_path(now), Path::Derp);
    // The next ping to A is answered.
    let pings = run_until(&mut p, &mut now, t0 + Duration::from_secs(16));
    let tx = pings
        .last()
        .map(|(_, tx)| *tx)
        .unwrap_or_else(|| panic!("no ping"));
    assert!(pong(&mut p, now + ms(25), A, tx));
    assert!(matches!(
        p.best_path(now + ms(25)),
        Path::Direct { addr: a, .. } if a == addr(A)
    ));
}

#[test]
fn forged_pong_is_ignored_and_counted() {
    let (t0, mut p, _) = started(&[A]);
    assert!(!pong(&mut p, t0 + ms(5), A, [0xee; 12]));
    assert_eq!(p.best_path(t0 + ms(5)), Path::Derp);
    assert_eq!(p.stats().unknown_pongs, 1);
    assert_eq!(p.stats().pongs_received, 0);
}

#[test]
fn replayed_pong_is_counted_as_unknown() {
    let (t0, mut p, pings) = started(&[A]);
    let tx = tx_for(&pings, A);
    assert!(pong(&mut p, t0 + ms(5), A, tx));
    assert!(!pong(&mut p, t0 + ms(6), A, tx));
    assert_eq!(p.stats().unknown_pongs, 1);
}

#[test]
fn unconfirmed_endpoints_are_pinged_every_ping_interval() {
    let (t0, mut p, _) = started(&[A]);
    let mut now = t0;
    let pings = run_until(&mut p, &mut now, t0 + Duration::from_secs(20));
    // Pinged at 0 s, then no more often than every 5 s: 5, 10, 15, 20 at the latest.
    assert!(
        (3..=4).contains(&pings.len()),
        "pings after t0: {}",
        pings.len()
    );
}

#[test]
fn network_change_distrusts_the_direct_path_and_pings_again() {
    let (t0, mut p, pings) = started(&[A, B]);
    pong(&mut p, t0 + ms(20), A, tx_for(&pings, A));
    let now = t0 + ms(500);
    p.network_changed(now);
    assert_eq!(p.best_path(now), Path::Derp);
    let (pings, others) = drain(&mut p);
    assert_eq!(pings.len(), 2, "both endpoints pinged at once");
    assert_eq!(others, vec![Transmit::CallMeMaybe]);
    pong(&mut p, now + ms(30), B, tx_for(&pings, B));
    assert!(matches!(p.best_path(now + ms(30)), Path::Direct { addr: b, .. } if b == addr(B)));
}

#[test]
fn call_me_maybe_adds_endpoints_and_pings_them_without_answering_in_kind() {
    let (t0, mut p, _) = started(&[A]);
    let link_local = addr("[fe80::1]:41641");
    let coder = addr("[fd60:627a:a42b::1]:41641");
    p.handle_call_me_maybe(t0 + ms(100), &[addr(B), link_local, coder]);
    let (pings, others) = drain(&mut p);
    // A was pinged 100 ms ago, but a call-me-maybe resets the interval.
    let to: Vec<SocketAddr> = pings.iter().map(|(a, _)| *a).collect();
    assert_eq!(to, vec![addr(B), addr(A)]);
    assert!(others.is_empty());
    assert_eq!(p.candidates().collect::<Vec<_>>(), vec![addr(B), addr(A)]);
}

#[test]
fn ping_is_answered_the_way_it_came_and_its_source_becomes_a_candidate() {
    let t0 = Instant::now();
    let mut p = PeerPaths::new(PathConfig::default());
    p.handle_ping(t0, Via::Udp(addr(A)), &PING);
    let relay = Via::Derp(crate::net::derp::NodePublicKey::from_bytes([9; 32]));
    p.handle_ping(t0, relay, &PING);
    let (_, others) = drain(&mut p);
    assert_eq!(
        others,
        vec![
            Transmit::Pong {
                to: Via::Udp(addr(A)),
                tx_id: [4; 12],
                src: Some(addr(A))
            },
            Transmit::Pong {
                to: relay,
                tx_id: [4; 12],
                src: None
            },
        ]
    );
    assert_eq!(p.candidates().collect::<Vec<_>>(), vec![addr(A)]);
}

#[test]
fn ping_from_a_new_endpoint_is_pinged_back_and_can_confirm_it() {
    let t0 = Instant::now();
    let mut p = PeerPaths::new(PathConfig::default());
    p.handle_ping(t0, Via::Udp(addr(A)), &PING);
    let (pings, others) = drain(&mut p);
    assert!(matches!(others.as_slice(), [Transmit::Pong { .. }]));
    assert!(pong(&mut p, t0 + ms(15), A, tx_for(&pings, A)));
    assert!(matches!(p.best_path(t0 + ms(15)), Path::Direct { addr: a, .. } if a == addr(A)));
}

#[test]
fn disable_direct_never_pings_over_udp_nor_goes_direct() {
    let t0 = Instant::now();
    let mut p = PeerPaths::new(PathConfig {
        disable_direct: true,
        ..PathConfig::default()
    });
    p.set_node_endpoints(t0, &[addr(A)]);
    p.handle_call_me_maybe(t0, &[addr(B)]);
    p.handle_ping(t0, Via::Udp(addr(A)), &PING);
    let (pings, others) = drain(&mut p);
    assert!(pings.is_empty());
    // Pings are still answered (upstream does too); only our own path stays on DERP.
    assert!(matches!(others.as_slice(), [Transmit::Pong { .. }]));
    assert_eq!(p.candidates().count(), 0);
    let mut now = t0;
    assert!(run_until(&mut p, &mut now, t0 + Duration::from_secs(30)).is_empty());
    assert_eq!(p.best_path(now), Path::Derp);
}

#[test]
fn removed_best_endpoint_falls_back_to_derp() {
    let (_, mut p, t) = direct_on_a();
    p.set_node_endpoints(t, &[addr(B)]);
    assert_eq!(p.best_path(t), Path::Derp);
}

#[test]
fn slow_direct_path_looks_for_a_better_one_every_upgrade_interval() {
    let (t0, mut p, pings) = started(&[A, B]);
    pong(&mut p, t0 + ms(50), A, tx_for(&pings, A));
    let mut now = t0 + ms(50);
    let mut saw_b = 0;
    let end = t0 + Duration::from_secs(61);
    while now < end {
        let until = (now + Duration::from_secs(1)).min(end);
        for (to, tx) in run_until(&mut p, &mut now, until) {
            if to == addr(A) {
                now += ms(50);
                pong(&mut p, now, A, tx);
            } else {
                saw_b += 1;
            }
        }
    }
    // B was pinged at 0 s and again once the 60 s upgrade interval passed.
    assert_eq!(saw_b, 1);
}

#[test]
fn a_new_latency_on_the_same_endpoint_is_the_same_route() {
    let a = Path::Direct {
        addr: addr(A),
        latency: ms(1),
    };
    let a_slower = Path::Direct {
        addr: addr(A),
        latency: ms(9),
    };
    let b = Path::Direct {
        addr: addr(B),
        latency: ms(1),
    };
    assert!(a.same_route(a_slower));
    assert!(Path::Derp.same_route(Path::Derp));
    assert!(!a.same_route(b));
    assert!(!a.same_route(Path::Derp));
}
