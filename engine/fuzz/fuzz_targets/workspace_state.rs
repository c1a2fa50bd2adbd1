//! Fuzzes the workspace state (`session/peers.rs`): the input as a sequence of
//! `WorkspaceUpdate` protobufs (a length byte and a snapshot flag before each), applied in
//! turn to one `WorkspaceState`.
//!
//! Checks: no panic; a refused update changes nothing (same snapshot before and after); an
//! applied one's `added_agents` were not known before and are now, its `removed_agents`
//! were and are not; the snapshot lists no agent the state does not know; the zone and the
//! status update can always be built.

#![no_main]

use std::collections::BTreeSet;

use codervpn_dns::ZoneConfig;
use codervpn_engine::session::peers::WorkspaceState;
use codervpn_proto::tailnet::WorkspaceUpdate;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn known(s: &WorkspaceState) -> BTreeSet<[u8; 16]> {
    s.agent_ids().copied().collect()
}

fuzz_target!(|data: &[u8]| {
    let mut state = WorkspaceState::new("fuzz", ZoneConfig::new("coder").unwrap());
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let n = usize::from(head >> 1).min(tail.len());
        let snapshot = head & 1 == 1;
        let (msg, tail) = tail.split_at(n);
        rest = tail;
        let Ok(update) = WorkspaceUpdate::decode(msg) else {
            continue;
        };
        let before = known(&state);
        let before_snapshot = state.snapshot();
        match state.apply(&update, snapshot) {
            Err(_) => {
                assert_eq!(known(&state), before);
                assert_eq!(state.snapshot(), before_snapshot);
            }
            Ok(applied) => {
                let after = known(&state);
                for id in &applied.added_agents {
                    assert!(!before.contains(id) && after.contains(id));
                }
                for id in &applied.removed_agents {
                    assert!(before.contains(id) && !after.contains(id));
                }
            }
        }
        let listed = state.snapshot().upserted_agents.len();
        assert!(listed <= state.agent_ids().count(), "the snapshot lists only known agents");
        let _ = state.zone();
        let _ = state.status_update();
    }
});
