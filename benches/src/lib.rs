//! Fixtures shared by the benches.

use codervpn_proto::vpn::{Agent, LastPing, PeerUpdate, Workspace, workspace};

/// A `PeerUpdate` shaped like a real one: `n` agents, one workspace each, three FQDNs, a
/// Coder-prefix address, a handshake time and a last ping.
pub fn peer_update_with_agents(n: usize) -> PeerUpdate {
    let mut update = PeerUpdate::default();
    for i in 0..n {
        let ws_id = uuid_bytes(0x1000 + i as u64);
        let agent_id = uuid_bytes(0x2000 + i as u64);
        let ws = format!("workspace{i}");
        let agent = format!("agent{i}");
        update.upserted_workspaces.push(Workspace {
            id: ws_id.clone(),
            name: ws.clone(),
            status: workspace::Status::Running as i32,
        });
        update.upserted_agents.push(Agent {
            id: agent_id.clone(),
            name: agent.clone(),
            workspace_id: ws_id,
            fqdn: vec![
                format!("{ws}.coder."),
                format!("{agent}.{ws}.me.coder."),
                format!("{agent}.{ws}.someowner.coder."),
            ],
            ip_addrs: vec![format!("fd60:627a:a42b:{:x}::", 0x2000 + i)],
            last_handshake: Some(prost_types::Timestamp {
                seconds: 1_764_000_000 + i as i64,
                nanos: 123_000_000,
            }),
            last_ping: Some(LastPing {
                latency: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 12_000_000,
                }),
                did_p2p: i % 2 == 0,
                preferred_derp: "Coder Embedded Relay".into(),
                preferred_derp_latency: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 3_000_000,
                }),
            }),
        });
    }
    update
}

fn uuid_bytes(n: u64) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    b
}
