#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::*;

/// A host's view: applies an update deletes first, then upserts (the app's order).
#[derive(Debug, Default, PartialEq)]
struct View {
    workspaces: BTreeMap<Vec<u8>, String>,
    agents: BTreeMap<Vec<u8>, (String, Vec<String>)>,
}

impl View {
    fn apply(&mut self, u: &vpn::PeerUpdate) {
        for a in &u.deleted_agents {
            self.agents.remove(&a.id);
        }
        for w in &u.deleted_workspaces {
            self.workspaces.remove(&w.id);
        }
        for w in &u.upserted_workspaces {
            self.workspaces.insert(w.id.clone(), w.name.clone());
        }
        for a in &u.upserted_agents {
            self.agents
                .insert(a.id.clone(), (a.name.clone(), a.ip_addrs.clone()));
        }
    }
}

fn ws(id: u8, name: &str) -> vpn::Workspace {
    vpn::Workspace {
        id: vec![id; 16],
        name: name.into(),
        status: 0,
    }
}

fn agent(id: u8, name: &str, addr: &str) -> vpn::Agent {
    vpn::Agent {
        id: vec![id; 16],
        name: name.into(),
        workspace_id: vec![id; 16],
        ip_addrs: vec![addr.into()],
        ..Default::default()
    }
}

/// xorshift64: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u8 {
        u8::try_from(self.next() % n).unwrap()
    }
}

fn random_update(rng: &mut Rng, step: usize) -> vpn::PeerUpdate {
    let mut u = vpn::PeerUpdate::default();
    for _ in 0..rng.below(4) {
        let id = rng.below(8);
        let name = format!("v{step}");
        match rng.below(4) {
            0 => u.upserted_workspaces.push(ws(id, &name)),
            1 => u.deleted_workspaces.push(ws(id, &name)),
            2 => u
                .upserted_agents
                .push(agent(id, &name, &format!("fd60::{step:x}"))),
            _ => u.deleted_agents.push(agent(id, &name, "")),
        }
    }
    u
}

#[test]
fn the_merged_update_leaves_a_host_where_every_update_would() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut each = View::default();
        let mut merged = View::default();
        let mut q = MergedUpdates::default();
        for step in 0..rng.below(60) as usize {
            let u = random_update(&mut rng, step);
            each.apply(&u);
            q.push(u);
            // Now and then the host reads what is queued.
            if rng.below(5) == 0
                && let Some(m) = q.pop()
            {
                merged.apply(&m);
            }
        }
        if let Some(m) = q.pop() {
            merged.apply(&m);
        }
        assert_eq!(each, merged, "seed {seed}");
        assert!(q.pop().is_none());
    }
}

#[test]
fn the_queue_holds_one_entry_per_peer_however_many_updates() {
    let mut q = MergedUpdates::default();
    for round in 0..1000 {
        let mut u = vpn::PeerUpdate::default();
        for id in 0..100u8 {
            u.upserted_agents
                .push(agent(id, "main", &format!("fd60::{round:x}")));
        }
        q.push(u);
    }
    assert_eq!(q.agents.len(), 100);
    let m = q.pop().unwrap();
    assert_eq!(m.upserted_agents.len(), 100);
    assert!(
        m.upserted_agents
            .iter()
            .all(|a| a.ip_addrs == ["fd60::3e7"])
    );
}

#[test]
fn an_empty_update_is_still_delivered_once() {
    let mut q = MergedUpdates::default();
    assert!(q.pop().is_none());
    q.push(vpn::PeerUpdate::default());
    assert_eq!(q.pop(), Some(vpn::PeerUpdate::default()));
    assert!(q.pop().is_none());
}

#[tokio::test]
async fn a_slow_reader_gets_the_latest_state_in_one_read() {
    let (tx, mut rx) = channel();
    tx.send(vpn::PeerUpdate {
        upserted_workspaces: vec![ws(1, "dev")],
        upserted_agents: vec![agent(1, "main", "fd60::1")],
        ..Default::default()
    })
    .unwrap();
    tx.send(vpn::PeerUpdate {
        deleted_agents: vec![agent(1, "main", "fd60::1")],
        ..Default::default()
    })
    .unwrap();
    let u = rx.recv().await.unwrap();
    assert_eq!(u.upserted_workspaces, [ws(1, "dev")]);
    assert!(u.upserted_agents.is_empty());
    assert_eq!(u.deleted_agents.len(), 1);
    assert!(rx.try_recv().is_none());
}
