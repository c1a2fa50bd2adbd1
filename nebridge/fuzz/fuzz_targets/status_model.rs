//! Fuzzes the status model (`nebridge/src/status`): the input is a sequence of
//! length-prefixed protobuf `PeerUpdate`s (each length one byte), decoded and applied in
//! turn, as the tunnel's updates reach `codervpn up` and the daemon's status socket.
//!
//! Checks: no panic in `apply` or `snapshot`; applying an update a second time changes
//! nothing (updates are upserts and deletions by id); the snapshot lists each agent once,
//! under a workspace it lists, workspaces and agents sorted by name then id.

#![no_main]

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use codervpn_nebridge::status::{PeerModel, TunnelState};
use codervpn_proto::vpn;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut model = PeerModel::default();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let take = usize::from(len).min(tail.len());
        let (msg, next) = tail.split_at(take);
        rest = next;
        let Ok(update) = vpn::PeerUpdate::decode(msg) else {
            continue;
        };
        model.apply(&update);
        let once = model.snapshot(&TunnelState::Started, now);
        model.apply(&update);
        let twice = model.snapshot(&TunnelState::Started, now);
        assert_eq!(once, twice, "applying an update twice changed the model");

        let mut agent_ids = HashSet::new();
        let mut last_ws: Option<(String, String)> = None;
        for ws in &once.workspaces {
            let key = (ws.name.clone(), ws.id.clone());
            assert!(last_ws.as_ref().is_none_or(|l| *l <= key), "workspaces out of order");
            last_ws = Some(key);
            let mut last_agent: Option<(String, String)> = None;
            for a in &ws.agents {
                assert!(agent_ids.insert(a.id.clone()), "agent {} listed twice", a.id);
                let key = (a.name.clone(), a.id.clone());
                assert!(last_agent.as_ref().is_none_or(|l| *l <= key), "agents out of order");
                last_agent = Some(key);
            }
        }
    }
});
