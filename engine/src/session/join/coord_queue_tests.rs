#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use codervpn_proto::tailnet::Node;

use super::*;

fn update_self(n: i64) -> CoordinateRequest {
    CoordinateRequest {
        update_self: Some(UpdateSelf {
            node: Some(Node {
                id: n,
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn add(id: u8) -> CoordinateRequest {
    CoordinateRequest {
        add_tunnel: Some(Tunnel { id: vec![id; 16] }),
        ..Default::default()
    }
}

fn remove(id: u8) -> CoordinateRequest {
    CoordinateRequest {
        remove_tunnel: Some(Tunnel { id: vec![id; 16] }),
        ..Default::default()
    }
}

fn ready(id: u8) -> CoordinateRequest {
    CoordinateRequest {
        ready_for_handshake: vec![ReadyForHandshake { id: vec![id; 16] }],
        ..Default::default()
    }
}

fn disconnect() -> CoordinateRequest {
    CoordinateRequest {
        disconnect: Some(Disconnect {}),
        ..Default::default()
    }
}

/// The coordinator's view of one client: its node, its tunnels, whether it left.
#[derive(Debug, Default, PartialEq)]
struct Coordinator {
    node: Option<i64>,
    tunnels: BTreeSet<Vec<u8>>,
    gone: bool,
}

impl Coordinator {
    fn apply(&mut self, r: &CoordinateRequest) {
        if self.gone {
            return;
        }
        if let Some(u) = &r.update_self {
            self.node = u.node.as_ref().map(|n| n.id);
        }
        if let Some(t) = &r.add_tunnel {
            self.tunnels.insert(t.id.clone());
        }
        if let Some(t) = &r.remove_tunnel {
            self.tunnels.remove(&t.id);
        }
        if r.disconnect.is_some() {
            self.gone = true;
        }
    }
}

fn drain(q: &mut CoordQueue) -> Vec<CoordinateRequest> {
    std::iter::from_fn(|| q.pop()).collect()
}

#[test]
fn in_step_requests_pass_through_unchanged() {
    let mut q = CoordQueue::default();
    for r in [update_self(1), add(1), ready(1), remove(1), disconnect()] {
        q.push(r.clone());
        assert_eq!(drain(&mut q), [r]);
    }
    q.push(add(2));
    assert!(drain(&mut q).is_empty(), "nothing after the disconnect");
}

#[test]
fn a_backlog_merges_to_one_entry_per_peer() {
    let mut q = CoordQueue::default();
    for round in 0..1000 {
        q.push(update_self(round));
        for id in 0..100 {
            q.push(add(id));
            q.push(ready(id));
        }
    }
    assert_eq!(q.tunnels.len(), 100);
    let out = drain(&mut q);
    assert_eq!(out.len(), 1 + 100 * 2);
    assert_eq!(out[0], update_self(999));
    assert_eq!(&out[1..3], [add(0), ready(0)]);
}

#[test]
fn a_remove_cancels_a_queued_ready_and_a_disconnect_goes_last() {
    let mut q = CoordQueue::default();
    q.push(add(1));
    q.push(ready(1));
    q.push(disconnect());
    q.push(add(9));
    // Ready then remove, while the add is still queued: only the remove is due.
    let mut q2 = CoordQueue::default();
    q2.push(add(2));
    q2.push(ready(2));
    q2.push(remove(2));
    assert_eq!(drain(&mut q2), [remove(2)]);
    assert_eq!(drain(&mut q), [add(1), ready(1), disconnect()]);
}

#[test]
fn a_request_of_several_parts_is_split() {
    let mut q = CoordQueue::default();
    let mut r = update_self(5);
    r.add_tunnel = Some(Tunnel { id: vec![3; 16] });
    r.ready_for_handshake = vec![
        ReadyForHandshake { id: vec![3; 16] },
        ReadyForHandshake { id: vec![4; 16] },
    ];
    q.push(r);
    assert_eq!(drain(&mut q), [update_self(5), add(3), ready(3), ready(4)]);
}

/// xorshift64: reproducible without a dependency.
fn next(s: &mut u64) -> u8 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    u8::try_from(*s % 251).unwrap()
}

#[test]
fn the_coordinator_ends_where_every_request_would_leave_it() {
    for seed in 1..=300u64 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut each = Coordinator::default();
        let mut merged = Coordinator::default();
        let mut q = CoordQueue::default();
        let mut readies_due = BTreeSet::new();
        let mut readies_sent = BTreeSet::new();
        for step in 0..usize::from(next(&mut s) % 80) {
            let id = next(&mut s) % 6;
            let r = match next(&mut s) % 10 {
                0..=2 => add(id),
                3..=4 => remove(id),
                5..=7 => ready(id),
                8 => update_self(i64::try_from(step).unwrap()),
                _ if next(&mut s).is_multiple_of(8) => disconnect(),
                _ => ready(id),
            };
            // A ready the coordinator can use: its tunnel is up when it arrives.
            if !each.gone
                && !r.ready_for_handshake.is_empty()
                && each.tunnels.contains(&vec![id; 16])
            {
                readies_due.insert((id, step));
            }
            // A remove makes the tunnel's earlier readies moot (a re-added tunnel gets its own).
            if r.remove_tunnel.is_some() {
                readies_due.retain(|(i, _)| *i != id);
            }
            each.apply(&r);
            q.push(r);
            if next(&mut s).is_multiple_of(4) {
                for out in drain(&mut q) {
                    merged.apply(&out);
                    record(&out, &merged, &mut readies_sent);
                }
                readies_due.retain(|(id, _)| !readies_sent.contains(id));
            }
        }
        for out in drain(&mut q) {
            merged.apply(&out);
            record(&out, &merged, &mut readies_sent);
        }
        assert_eq!(each, merged, "seed {seed}");
        // Every useful ready still useful at the end reached the coordinator.
        for (id, _) in &readies_due {
            if merged.tunnels.contains(&vec![*id; 16]) && !merged.gone {
                assert!(readies_sent.contains(id), "seed {seed}: ready {id} lost");
            }
        }
    }
}

fn record(out: &CoordinateRequest, c: &Coordinator, sent: &mut BTreeSet<u8>) {
    for r in &out.ready_for_handshake {
        if c.tunnels.contains(&r.id) {
            sent.insert(r.id[0]);
        }
    }
}
