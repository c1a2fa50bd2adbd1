//! PeerUpdates for a host that may read them late: deltas queued while it is away merge
//! into one, the latest change per workspace and per agent, so the queue holds at most one
//! entry per peer however long the host is busy — and applying the merged update (deletes
//! first, then upserts, the app's order) leaves the host where applying each one would.

use codervpn_proto::vpn;

use crate::coalesce::{self, Merge};

/// Sends PeerUpdates toward the host; never waits.
pub type UpdateSender = coalesce::Sender<MergedUpdates>;
/// What the host reads: every update since its last read, merged into one.
pub type PeerUpdates = coalesce::Receiver<MergedUpdates>;

/// A merging channel for PeerUpdates.
pub fn channel() -> (UpdateSender, PeerUpdates) {
    coalesce::channel()
}

/// Upserted or deleted: the last change wins.
#[derive(Debug)]
enum Change<T> {
    Upsert(T),
    Delete(T),
}

/// The changes not yet read, in first-change order, one per id.
#[derive(Debug, Default)]
pub struct MergedUpdates {
    workspaces: Vec<(Vec<u8>, Change<vpn::Workspace>)>,
    agents: Vec<(Vec<u8>, Change<vpn::Agent>)>,
    /// An update arrived (an empty one still counts: the first, of no workspaces, is news).
    due: bool,
}

fn set<T>(entries: &mut Vec<(Vec<u8>, Change<T>)>, id: &[u8], change: Change<T>) {
    match entries.iter_mut().find(|(k, _)| k == id) {
        Some((_, c)) => *c = change,
        None => entries.push((id.to_vec(), change)),
    }
}

impl Merge for MergedUpdates {
    type Item = vpn::PeerUpdate;

    fn push(&mut self, u: vpn::PeerUpdate) {
        self.due = true;
        // The order a host applies one update in: deletes, then upserts.
        for a in u.deleted_agents {
            set(&mut self.agents, &a.id.clone(), Change::Delete(a));
        }
        for w in u.deleted_workspaces {
            set(&mut self.workspaces, &w.id.clone(), Change::Delete(w));
        }
        for w in u.upserted_workspaces {
            set(&mut self.workspaces, &w.id.clone(), Change::Upsert(w));
        }
        for a in u.upserted_agents {
            set(&mut self.agents, &a.id.clone(), Change::Upsert(a));
        }
    }

    fn pop(&mut self) -> Option<vpn::PeerUpdate> {
        if !std::mem::take(&mut self.due) {
            return None;
        }
        let mut out = vpn::PeerUpdate::default();
        for (_, c) in self.workspaces.drain(..) {
            match c {
                Change::Upsert(w) => out.upserted_workspaces.push(w),
                Change::Delete(w) => out.deleted_workspaces.push(w),
            }
        }
        for (_, c) in self.agents.drain(..) {
            match c {
                Change::Upsert(a) => out.upserted_agents.push(a),
                Change::Delete(a) => out.deleted_agents.push(a),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
#[path = "peer_updates_tests.rs"]
mod tests;
