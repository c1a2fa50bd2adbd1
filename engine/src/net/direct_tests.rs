//! Two [`DirectPaths`] wired back to back through a fake network: UDP that can be cut, and a
//! DERP relay that always delivers.

use std::collections::VecDeque;
use std::time::Duration;

use super::*;
use crate::net::disco::{DiscoPrivateKey, Path, PathConfig};
use crate::net::wg::{PeerConfig, PeerSet};

const A_UDP: &str = "10.0.0.1:1000";
const B_UDP: &str = "10.0.0.2:2000";

struct Side {
    node: [u8; 32],
    udp: SocketAddr,
    direct: DirectPaths,
    wg: PeerSet,
}

struct Net {
    a: Side,
    b: Side,
    now: Instant,
    udp_up: bool,
    /// Time each relayed packet takes.
    relay_delay: Duration,
    /// (to side a?, send)
    queue: VecDeque<(bool, DiscoSend)>,
}

fn side(secret: u8, udp: &str) -> (Side, DiscoPublicKey) {
    let node_secret = [secret; 32];
    let node = crate::net::wg::public_key(&node_secret);
    let disco = DiscoPrivateKey::from_bytes([secret + 100; 32]);
    let public = disco.public_key();
    let side = Side {
        node,
        udp: udp.parse().unwrap(),
        direct: DirectPaths::new(disco, node, PathConfig::default()),
        wg: PeerSet::new(node_secret),
    };
    (side, public)
}

impl Net {
    /// A and B know each other's disco keys and endpoints; both start on DERP.
    fn new() -> Self {
        let (mut a, a_disco) = side(1, A_UDP);
        let (mut b, b_disco) = side(2, B_UDP);
        let now = Instant::now();
        let mut queue = VecDeque::new();
        let (a_node, b_node) = (a.node, b.node);
        for (me, peer, peer_disco, to_a) in [
            (&mut a, b_node, b_disco, false),
            (&mut b, a_node, a_disco, true),
        ] {
            let relay = Via::Derp(NodePublicKey::from_bytes(peer));
            me.wg.upsert_peer_via(
                PeerConfig {
                    public_key: peer,
                    preshared_key: None,
                    allowed_ips: vec![],
                    endpoint: None,
                    persistent_keepalive: None,
                },
                Some(relay),
            );
            let peer_udp = if to_a { A_UDP } else { B_UDP };
            me.direct
                .set_own_endpoints(vec![if to_a { B_UDP } else { A_UDP }.parse().unwrap()]);
            me.direct.set_peer(
                now,
                peer,
                peer_disco,
                &[peer_udp.parse().unwrap()],
                true,
                &mut me.wg,
                &mut |s| queue.push_back((to_a, s)),
            );
        }
        Self {
            a,
            b,
            now,
            udp_up: true,
            relay_delay: Duration::ZERO,
            queue,
        }
    }

    /// Delivers everything in flight (and what it provokes).
    fn pump(&mut self) {
        while let Some((to_a, send)) = self.queue.pop_front() {
            let (me, other) = if to_a {
                (&mut self.a, &self.b)
            } else {
                (&mut self.b, &self.a)
            };
            let queue = &mut self.queue;
            let mut out = |s| queue.push_back((!to_a, s));
            let DiscoSend { to, packet } = send;
            match to {
                Via::Udp(to) => {
                    if self.udp_up && to == me.udp {
                        me.direct
                            .handle_udp(self.now, other.udp, &packet, &mut me.wg, &mut out);
                    }
                }
                Via::Derp(_) => {
                    self.now += self.relay_delay;
                    let from = NodePublicKey::from_bytes(other.node);
                    me.direct
                        .handle_relayed(self.now, 1, &from, &packet, &mut me.wg, &mut out);
                }
            }
        }
    }

    /// Advances time in 250 ms ticks (the runner's), delivering as it goes.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(250);
            for to_a in [false, true] {
                let me = if to_a { &mut self.b } else { &mut self.a };
                let queue = &mut self.queue;
                me.direct
                    .handle_timeout(self.now, &mut me.wg, &mut |s| queue.push_back((to_a, s)));
            }
            self.pump();
        }
    }

    fn a_path(&self) -> Path {
        self.a.direct.path(&self.b.node).unwrap()
    }

    fn a_endpoint(&self) -> Option<Via> {
        self.a.wg.stats().next().unwrap().endpoint
    }

    /// A's path to B through DERP.
    fn a_relay(&self) -> Option<Via> {
        Some(Via::Derp(NodePublicKey::from_bytes(self.b.node)))
    }
}

#[test]
fn reachable_udp_endpoint_becomes_the_wireguard_endpoint() {
    let mut net = Net::new();
    assert_eq!(net.a_endpoint(), net.a_relay());
    net.pump();
    assert!(
        matches!(net.a_path(), Path::Direct { addr, .. } if addr == B_UDP.parse().unwrap()),
        "{:?}",
        net.a_path()
    );
    assert_eq!(net.a_endpoint(), Some(Via::Udp(B_UDP.parse().unwrap())));
    assert!(matches!(
        net.b.direct.path(&net.a.node),
        Some(Path::Direct { .. })
    ));
}

#[test]
fn blocked_udp_falls_back_to_derp_and_recovers() {
    let mut net = Net::new();
    net.pump();
    assert!(matches!(net.a_path(), Path::Direct { .. }));

    net.udp_up = false;
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.a_path(), Path::Derp);
    assert_eq!(net.a_endpoint(), net.a_relay());

    net.udp_up = true;
    net.run_for(Duration::from_secs(10));
    assert!(matches!(net.a_path(), Path::Direct { .. }));
    assert_eq!(net.a_endpoint(), Some(Via::Udp(B_UDP.parse().unwrap())));
}

#[test]
fn upsert_does_not_move_a_pinned_direct_endpoint() {
    let mut net = Net::new();
    net.pump();
    net.a.wg.upsert_peer(PeerConfig {
        public_key: net.b.node,
        preshared_key: None,
        allowed_ips: vec![],
        endpoint: Some("192.0.2.9:9".parse().unwrap()),
        persistent_keepalive: None,
    });
    assert_eq!(net.a_endpoint(), Some(Via::Udp(B_UDP.parse().unwrap())));
}

#[test]
fn forged_and_unknown_disco_packets_are_counted_and_change_nothing() {
    let mut net = Net::new();
    net.queue.clear();
    let stranger = DiscoPrivateKey::from_bytes([50; 32]);
    let ping = Message::Ping(Ping {
        tx_id: [1; 12],
        node_key: None,
    });
    let a_disco = DiscoPrivateKey::from_bytes([101; 32]).public_key();
    let from: SocketAddr = "192.0.2.9:9".parse().unwrap();
    let mut sent = Vec::new();
    // An unknown sender key.
    let packet = disco::seal(&stranger, &a_disco, &ping);
    net.a
        .direct
        .handle_udp(net.now, from, &packet, &mut net.a.wg, &mut |s| sent.push(s));
    // B's key in the header, but sealed by someone else.
    let mut forged = packet.clone();
    let b_disco = DiscoPrivateKey::from_bytes([102; 32]).public_key();
    forged[6..38].copy_from_slice(b_disco.as_bytes());
    net.a
        .direct
        .handle_udp(net.now, from, &forged, &mut net.a.wg, &mut |s| sent.push(s));
    // Relayed by B, but under another disco key.
    let node_b = NodePublicKey::from_bytes(net.b.node);
    net.a
        .direct
        .handle_relayed(net.now, 1, &node_b, &packet, &mut net.a.wg, &mut |s| {
            sent.push(s)
        });
    assert!(sent.is_empty(), "nothing answered: {sent:?}");
    assert_eq!(
        net.a.direct.dropped(),
        DiscoDropped {
            unknown_sender: 2,
            undecryptable: 1,
            call_me_maybe_over_udp: 0,
        }
    );
    assert_eq!(net.a_path(), Path::Derp);
}

#[test]
fn network_change_re_probes_and_the_direct_path_returns() {
    let mut net = Net::new();
    net.pump();
    let mut sent = Vec::new();
    net.a
        .direct
        .network_changed(net.now, &mut net.a.wg, &mut |s| sent.push(s));
    assert!(
        sent.iter().any(
            |s| matches!(s, DiscoSend { to: Via::Udp(to), .. } if *to == B_UDP.parse().unwrap())
        ),
        "the peer is pinged at once: {sent:?}"
    );
    assert_eq!(net.a_path(), Path::Derp, "no trust until it answers");
    net.queue.extend(sent.into_iter().map(|s| (false, s)));
    net.pump();
    assert!(matches!(net.a_path(), Path::Direct { .. }));
    assert_eq!(net.a_endpoint(), Some(Via::Udp(B_UDP.parse().unwrap())));
}

#[test]
fn a_peer_on_derp_is_pinged_through_the_relay_and_the_last_round_trip_is_kept() {
    let mut net = Net::new();
    net.udp_up = false;
    net.relay_delay = Duration::from_millis(20);
    assert_eq!(net.a.direct.relay_latency(&net.b.node), None);
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.a_path(), Path::Derp);
    let rtt = net
        .a
        .direct
        .relay_latency(&net.b.node)
        .expect("a relayed pong");
    assert!(
        rtt >= Duration::from_millis(40) && rtt < Duration::from_millis(500),
        "{rtt:?}"
    );

    // Direct again: no more pings through the relay; the last figure stays.
    net.udp_up = true;
    net.run_for(Duration::from_secs(10));
    assert!(matches!(net.a_path(), Path::Direct { .. }));
    let last = net.a.direct.relay_latency(&net.b.node);
    assert!(last.is_some());
    net.relay_delay = Duration::from_millis(70);
    net.run_for(Duration::from_secs(10));
    assert!(matches!(net.a_path(), Path::Direct { .. }));
    assert_eq!(net.a.direct.relay_latency(&net.b.node), last);
    net.a.direct.remove_peer(&net.b.node);
    assert!(net.a.direct.relay_pings.is_empty());
}

#[test]
fn a_user_ping_goes_the_current_way_and_its_pong_moves_no_path() {
    let mut net = Net::new();
    net.udp_up = false;
    net.relay_delay = Duration::from_millis(10);
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.a_path(), Path::Derp);
    let stats_before = net.a.direct.peers[&net.b.node].paths.stats();

    // On DERP: the ping crosses the relay and the pong says so.
    let queue = &mut net.queue;
    let tx = net
        .a
        .direct
        .user_ping(net.now, net.b.node, &mut |s| queue.push_back((false, s)))
        .unwrap();
    assert!(matches!(
        net.queue.back(),
        Some((
            false,
            DiscoSend {
                to: Via::Derp(_),
                ..
            }
        ))
    ));
    net.pump();
    let pong = net.a.direct.poll_user_pong().expect("a pong through DERP");
    assert_eq!(pong.tx_id, tx);
    assert!(matches!(pong.via, Via::Derp(m) if m == NodePublicKey::from_bytes(net.b.node)));
    assert!(
        pong.latency >= Duration::from_millis(20),
        "{:?}",
        pong.latency
    );
    assert_eq!(net.a.direct.poll_user_pong(), None);
    assert_eq!(
        net.a.direct.peers[&net.b.node].paths.stats().unknown_pongs,
        stats_before.unknown_pongs,
        "the user's pong is not taken for a discovery pong"
    );

    // Direct: the ping goes over UDP to the direct address.
    net.udp_up = true;
    net.run_for(Duration::from_secs(10));
    let Path::Direct { addr, .. } = net.a_path() else {
        panic!("not direct: {:?}", net.a_path())
    };
    let queue = &mut net.queue;
    net.a
        .direct
        .user_ping(net.now, net.b.node, &mut |s| queue.push_back((false, s)))
        .unwrap();
    assert!(
        matches!(net.queue.back(), Some((false, DiscoSend { to: Via::Udp(to), .. })) if *to == addr)
    );
    net.pump();
    let pong = net.a.direct.poll_user_pong().expect("a direct pong");
    assert_eq!(pong.via, Via::Udp(B_UDP.parse().unwrap()));
    assert!(matches!(net.a_path(), Path::Direct { .. }));

    // A lost ping is forgotten after its timeout; a peer without disco is refused.
    net.udp_up = false;
    let queue = &mut net.queue;
    net.a
        .direct
        .user_ping(net.now, net.b.node, &mut |s| queue.push_back((false, s)))
        .unwrap();
    net.pump();
    assert_eq!(net.a.direct.poll_user_pong(), None);
    net.run_for(USER_PING_TIMEOUT + Duration::from_secs(1));
    assert!(net.a.direct.user_pings.is_empty());
    assert_eq!(
        net.a.direct.user_ping(net.now, [9; 32], &mut |_| {}),
        Err(PingRefused::NoDisco)
    );
}
