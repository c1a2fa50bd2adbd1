//! Two peer sets talking in memory: every datagram one emits is fed to the other.

use super::*;

const A_ADDR: &str = "192.0.2.1:51820";
const B_ADDR: &str = "192.0.2.2:51820";

fn key(seed: u8) -> [u8; 32] {
    [seed; 32]
}

fn public(private: [u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(private)).to_bytes()
}

/// A minimal IPv4 packet (header checksum not needed by WireGuard).
pub(crate) fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let len = 20 + payload.len();
    let mut p = vec![
        0x45,
        0,
        (len >> 8) as u8,
        len as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

struct Pair {
    a: PeerSet,
    b: PeerSet,
}

fn pair() -> Pair {
    let mut a = PeerSet::new(key(1));
    let mut b = PeerSet::new(key(2));
    a.upsert_peer(PeerConfig {
        public_key: public(key(2)),
        preshared_key: None,
        allowed_ips: vec!["10.0.0.2/32".parse().unwrap()],
        endpoint: Some(B_ADDR.parse().unwrap()),
        persistent_keepalive: None,
    });
    b.upsert_peer(PeerConfig {
        public_key: public(key(1)),
        preshared_key: None,
        allowed_ips: vec!["10.0.0.1/32".parse().unwrap()],
        endpoint: None,
        persistent_keepalive: None,
    });
    Pair { a, b }
}

#[derive(Debug, Default)]
struct Out {
    net: Vec<(SocketAddr, Vec<u8>)>,
    tun: Vec<Vec<u8>>,
}

fn sink(out: &mut Out) -> impl FnMut(Emit<'_>) + '_ {
    |e| match e {
        Emit::Network {
            to: Via::Udp(to),
            data,
        } => out.net.push((to, data.to_vec())),
        Emit::Network { to, .. } => panic!("no DERP in these tests: {to}"),
        Emit::Tunnel(data) => out.tun.push(data.to_vec()),
    }
}

/// Delivers datagrams back and forth until nothing more is emitted; returns what reached
/// each side's device.
fn settle(p: &mut Pair, mut to_b: Vec<(SocketAddr, Vec<u8>)>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut buf = vec![0u8; 2048];
    let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
    let mut to_a: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for _ in 0..10 {
        let mut out = Out::default();
        for (_, d) in to_b.drain(..) {
            p.b.decapsulate(
                Via::Udp(A_ADDR.parse().unwrap()),
                &d,
                &mut buf,
                &mut sink(&mut out),
            );
        }
        at_b.append(&mut out.tun);
        to_a.append(&mut out.net);
        let mut out = Out::default();
        for (_, d) in to_a.drain(..) {
            p.a.decapsulate(
                Via::Udp(B_ADDR.parse().unwrap()),
                &d,
                &mut buf,
                &mut sink(&mut out),
            );
        }
        at_a.append(&mut out.tun);
        to_b.append(&mut out.net);
        if to_b.is_empty() {
            break;
        }
    }
    (at_a, at_b)
}

fn send_a(p: &mut Pair, packet: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut buf = vec![0u8; 2048];
    let mut out = Out::default();
    p.a.encapsulate(packet, &mut buf, &mut sink(&mut out));
    out.net
}

#[test]
fn first_packet_triggers_a_handshake_and_is_delivered_after_it() {
    let mut p = pair();
    let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"hello");
    let first = send_a(&mut p, &packet);
    assert_eq!(first.len(), 1, "a handshake initiation");
    assert_eq!(first[0].0, B_ADDR.parse().unwrap());
    assert_eq!(first[0].1.len(), 148);
    let (_, at_b) = settle(&mut p, first);
    assert_eq!(
        at_b,
        [packet],
        "the queued packet arrives once the handshake is done"
    );
}

#[test]
fn data_flows_both_ways_after_the_handshake_and_endpoint_is_learnt() {
    let mut p = pair();
    let hello = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"hello");
    let first = send_a(&mut p, &hello);
    settle(&mut p, first);
    // B never had A's endpoint: it learnt it from the authenticated handshake.
    let reply = ipv4([10, 0, 0, 2], [10, 0, 0, 1], b"world");
    let mut buf = vec![0u8; 2048];
    let mut out = Out::default();
    p.b.encapsulate(&reply, &mut buf, &mut sink(&mut out));
    assert_eq!(out.net.len(), 1);
    assert_eq!(out.net[0].0, A_ADDR.parse().unwrap());
    let mut at_a = Out::default();
    p.a.decapsulate(
        Via::Udp(B_ADDR.parse().unwrap()),
        &out.net[0].1,
        &mut buf,
        &mut sink(&mut at_a),
    );
    assert_eq!(at_a.tun, [reply]);
    let stats: Vec<_> = p.a.stats().collect();
    assert!(stats[0].since_last_handshake.is_some());
    assert!(stats[0].tx_bytes > 0 && stats[0].rx_bytes > 0);
}

fn established() -> Pair {
    let mut p = pair();
    let first = send_a(&mut p, &ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"x"));
    settle(&mut p, first);
    p
}

#[test]
fn garbage_and_truncated_datagrams_are_dropped_and_counted() {
    let mut p = established();
    let mut buf = vec![0u8; 2048];
    let mut out = Out::default();
    let from = A_ADDR.parse().unwrap();
    for junk in [
        &b""[..],
        b"abc",
        &[1, 0, 0, 0, 9][..],
        &[4, 0, 0, 0][..],
        &[0xff; 64][..],
    ] {
        p.b.decapsulate(Via::Udp(from), junk, &mut buf, &mut sink(&mut out));
    }
    let data = send_a(&mut p, &ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"payload"));
    let truncated = &data[0].1[..data[0].1.len() - 5];
    p.b.decapsulate(Via::Udp(from), truncated, &mut buf, &mut sink(&mut out));
    assert!(out.tun.is_empty() && out.net.is_empty());
    let c = p.b.counters();
    assert_eq!(c.garbage + c.rejected + c.unknown_peer, 6, "{c:?}");
}

#[test]
fn replayed_data_is_rejected() {
    let mut p = established();
    let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"once");
    let data = send_a(&mut p, &packet);
    let (_, at_b) = settle(&mut p, data.clone());
    assert_eq!(at_b, [packet]);
    let (_, again) = settle(&mut p, data);
    assert!(again.is_empty());
    assert_eq!(p.b.counters().rejected, 1);
}

#[test]
fn datagram_for_an_unknown_peer_is_dropped() {
    let mut p = established();
    let mut stranger = PeerSet::new(key(9));
    stranger.upsert_peer(PeerConfig {
        public_key: public(key(2)),
        preshared_key: None,
        allowed_ips: vec!["10.0.0.0/24".parse().unwrap()],
        endpoint: Some(B_ADDR.parse().unwrap()),
        persistent_keepalive: None,
    });
    let mut buf = vec![0u8; 2048];
    let mut init = Out::default();
    stranger.encapsulate(
        &ipv4([10, 0, 0, 9], [10, 0, 0, 2], b"hi"),
        &mut buf,
        &mut sink(&mut init),
    );
    let mut out = Out::default();
    p.b.decapsulate(
        Via::Udp("192.0.2.9:1".parse().unwrap()),
        &init.net[0].1,
        &mut buf,
        &mut sink(&mut out),
    );
    assert!(out.net.is_empty(), "no handshake response to a stranger");
    assert_eq!(p.b.counters().unknown_peer, 1);
}

#[test]
fn source_outside_allowed_ips_is_dropped() {
    let mut p = established();
    // A's peer config for B covers 10.0.0.2; B only accepts 10.0.0.1 from A.
    let spoofed = ipv4([10, 0, 0, 77], [10, 0, 0, 2], b"spoof");
    let data = send_a(&mut p, &spoofed);
    let (_, at_b) = settle(&mut p, data);
    assert!(at_b.is_empty());
    assert_eq!(p.b.counters().source_not_allowed, 1);
}

#[test]
fn packets_without_a_route_or_endpoint_are_counted() {
    let mut p = pair();
    assert!(send_a(&mut p, &ipv4([10, 0, 0, 1], [10, 9, 9, 9], b"x")).is_empty());
    assert!(send_a(&mut p, b"not ip").is_empty());
    assert_eq!(p.a.counters().no_route, 2);
    let mut buf = vec![0u8; 2048];
    let mut out = Out::default();
    p.b.encapsulate(
        &ipv4([10, 0, 0, 2], [10, 0, 0, 1], b"x"),
        &mut buf,
        &mut sink(&mut out),
    );
    assert!(out.net.is_empty());
    assert_eq!(p.b.counters().no_endpoint, 1, "B has no endpoint for A yet");
}

#[test]
fn endpoint_roams_to_the_source_of_authenticated_datagrams() {
    let mut p = established();
    let data = send_a(&mut p, &ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"moved"));
    let mut buf = vec![0u8; 2048];
    let mut out = Out::default();
    let new_addr: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    p.b.decapsulate(
        Via::Udp(new_addr),
        &data[0].1,
        &mut buf,
        &mut sink(&mut out),
    );
    assert_eq!(out.tun.len(), 1);
    assert_eq!(
        p.b.stats().next().unwrap().endpoint,
        Some(Via::Udp(new_addr))
    );
}

#[test]
fn removing_a_peer_removes_its_routes() {
    let mut p = established();
    assert!(p.a.remove_peer(&public(key(2))));
    assert!(!p.a.remove_peer(&public(key(2))));
    assert!(send_a(&mut p, &ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"x")).is_empty());
    assert_eq!(p.a.counters().no_route, 1);
    assert!(p.a.is_empty());
}

#[test]
fn upsert_replaces_allowed_ips_and_keeps_the_session() {
    let mut p = established();
    p.a.upsert_peer(PeerConfig {
        public_key: public(key(2)),
        preshared_key: None,
        allowed_ips: vec!["10.0.1.0/24".parse().unwrap()],
        endpoint: None,
        persistent_keepalive: None,
    });
    assert!(
        send_a(&mut p, &ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"x")).is_empty(),
        "old route gone"
    );
    let data = send_a(&mut p, &ipv4([10, 0, 0, 1], [10, 0, 1, 5], b"x"));
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].1[0], 4, "a data message: the session survived");
    assert_eq!(data[0].0, B_ADDR.parse().unwrap(), "the endpoint survived");
}

#[test]
fn persistent_keepalive_is_sent_by_the_timers() {
    let mut p = pair();
    p.a.upsert_peer(PeerConfig {
        public_key: public(key(2)),
        preshared_key: None,
        allowed_ips: vec!["10.0.0.2/32".parse().unwrap()],
        endpoint: Some(B_ADDR.parse().unwrap()),
        persistent_keepalive: Some(1),
    });
    let first = send_a(&mut p, &ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"x"));
    settle(&mut p, first);
    std::thread::sleep(Duration::from_millis(1100));
    let mut buf = vec![0u8; 2048];
    let mut out = Out::default();
    p.a.update_timers(Instant::now(), &mut buf, &mut sink(&mut out));
    assert_eq!(out.net.len(), 1, "a keepalive");
    assert_eq!(out.net[0].1.len(), 32, "an empty data message");
}

fn tcp6_syn(src: &str, dst: &str) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
    p.extend_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&[
        0xc0, 1, 0, 22, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 2, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    p
}

#[test]
fn a_silent_peer_gets_icmp6_unreachable_and_an_unowned_address_stays_dropped() {
    let mut a = PeerSet::new(key(1));
    a.upsert_peer(PeerConfig {
        public_key: public(key(2)),
        preshared_key: None,
        allowed_ips: vec!["fd60:627a:a42b:1::2/128".parse().unwrap()],
        endpoint: Some(B_ADDR.parse().unwrap()),
        persistent_keepalive: None,
    });
    let mut buf = vec![0u8; 2048];
    let syn = tcp6_syn("fd60:627a:a42b::1", "fd60:627a:a42b:1::2");
    let t0 = Instant::now();
    let mut send = |a: &mut PeerSet, packet: &[u8]| {
        let mut out = Out::default();
        a.encapsulate(packet, &mut buf, &mut sink(&mut out));
        out
    };
    let first = send(&mut a, &syn);
    assert!(
        first.tun.is_empty(),
        "the first packet waits for the handshake"
    );
    assert_eq!(first.net.len(), 1, "a handshake initiation");
    let tick = |a: &mut PeerSet, secs: u64| {
        let mut out = Out::default();
        a.update_timers(
            t0 + Duration::from_secs(secs),
            &mut vec![0u8; 2048],
            &mut sink(&mut out),
        );
    };
    tick(&mut a, 0);
    tick(&mut a, 4);
    assert!(
        send(&mut a, &syn).tun.is_empty(),
        "4 s unanswered: still waiting"
    );
    tick(&mut a, 5);
    let dead = send(&mut a, &syn);
    assert_eq!(dead.tun.len(), 1, "5 s unanswered: unreachable");
    let icmp = &dead.tun[0];
    assert_eq!((icmp[6], icmp[40], icmp[41]), (58, 1, 3));
    assert_eq!(&icmp[24..40], &syn[8..24], "back to the sender");
    assert!(
        send(&mut a, &syn).tun.is_empty(),
        "rate-limited within a tick"
    );
    assert_eq!(a.counters().unreachable_sent, 1);

    // No peer owns it (yet, right after a join): dropped, not answered.
    tick(&mut a, 6);
    let nobody = send(
        &mut a,
        &tcp6_syn("fd60:627a:a42b::1", "fd60:627a:a42b:9::9"),
    );
    assert!(nobody.tun.is_empty() && nobody.net.is_empty());
    assert_eq!(a.counters().unreachable_sent, 1);
}

#[test]
fn after_a_session_reset_the_next_packet_starts_a_handshake() {
    let mut p = pair();
    let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"hello");
    let first = send_a(&mut p, &packet);
    let (_, at_b) = settle(&mut p, first);
    assert_eq!(at_b.len(), 1, "delivered once the handshake completed");
    let data = send_a(&mut p, &packet);
    assert_eq!(data[0].1[0], 4, "a session: data goes out at once");
    p.a.reset_sessions();
    let after = send_a(&mut p, &packet);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].1[0], 1, "no session: a handshake initiation");
    let (_, at_b) = settle(&mut p, after);
    assert_eq!(at_b.len(), 1, "and the packet arrives after it");
}
