//! `codervpn status --json`: the versioned status document (schema in
//! `docs/status-json.md`). Built from the status the tunnel reports over the CoderVPN
//! protocol and, with our engine in-process, from the engine's own counters and paths.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use codervpn_engine::host::EngineSnapshot;
use codervpn_engine::host::Path;
use codervpn_engine::host::PeerStats;
use serde::{Deserialize, Serialize};

use crate::status::{AgentStatus, AgentView, StatusSnapshot};

/// Bumped when a field changes meaning or goes away (new fields do not bump it).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    pub schema_version: u32,
    /// `codervpn <version>`.
    pub codervpn_version: String,
    /// `embedded`, `compat-daemon` or `compat-dylib`.
    pub mode: String,
    pub state: String,
    pub error: Option<String>,
    /// Engine facts; `null` in compat modes (the tunnel is Coder's).
    pub control_plane: Option<ControlPlaneDoc>,
    pub network: Option<NetworkDoc>,
    pub workspaces: Vec<WorkspaceDoc>,
    pub invalid_agents: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlPlaneDoc {
    pub connected: bool,
    /// Unix seconds: connected since, or (when not connected) redialling since.
    pub since_unix: Option<u64>,
    pub redials: u64,
    pub failed_dials: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkDoc {
    pub udp_port: u16,
    /// Our addresses as the STUN servers saw them.
    pub stun_endpoints: Vec<String>,
    pub stun_requests: u64,
    pub stun_responses: u64,
    pub direct_connections_disabled: bool,
    pub home_derp: Option<RegionDoc>,
    pub derp: Vec<DerpDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionDoc {
    pub id: i64,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DerpDoc {
    pub id: i64,
    pub name: Option<String>,
    pub connected: bool,
    pub reconnects: u64,
    /// STUN round trip when UDP works, else the TCP connect time measured at join.
    pub latency_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceDoc {
    pub id: String,
    pub name: String,
    pub status: String,
    pub agents: Vec<AgentDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDoc {
    pub id: String,
    pub name: String,
    /// The name to connect to (first FQDN, no trailing dot).
    pub host: Option<String>,
    pub fqdns: Vec<String>,
    pub addresses: Vec<String>,
    pub status: AgentStatus,
    pub path: Option<PathDoc>,
    pub latency_ms: Option<f64>,
    pub last_handshake_unix: Option<u64>,
    pub handshake_age_secs: Option<u64>,
    /// WireGuard payload bytes (engine only).
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
}

/// The path packets to an agent take now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PathDoc {
    Direct {
        /// Its address, when known (engine only).
        endpoint: Option<String>,
    },
    Derp {
        region_id: Option<i64>,
        region: Option<String>,
    },
}

impl PathDoc {
    /// `direct 192.0.2.1:41641`, `DERP(Coder Embedded Relay, 999)`, `DERP(999)` or `DERP`.
    pub fn text(&self) -> String {
        match self {
            PathDoc::Direct { endpoint: Some(e) } => format!("direct {e}"),
            PathDoc::Direct { endpoint: None } => "direct".to_owned(),
            PathDoc::Derp {
                region: Some(name),
                region_id: Some(id),
            } => format!("DERP({name}, {id})"),
            PathDoc::Derp {
                region: None,
                region_id: Some(id),
            } => format!("DERP({id})"),
            PathDoc::Derp { .. } => "DERP".to_owned(),
        }
    }
}

fn unix(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The document for `snapshot` (and `engine`, with our engine in-process) at `now`.
pub fn build(
    snapshot: &StatusSnapshot,
    engine: Option<&EngineSnapshot>,
    mode: &str,
    now: SystemTime,
) -> StatusDoc {
    let workspaces = snapshot
        .workspaces
        .iter()
        .map(|w| WorkspaceDoc {
            id: w.id.clone(),
            name: w.name.clone(),
            status: w.status.clone(),
            agents: w.agents.iter().map(|a| agent(a, engine, now)).collect(),
        })
        .collect();
    StatusDoc {
        schema_version: SCHEMA_VERSION,
        codervpn_version: format!("codervpn {}", env!("CARGO_PKG_VERSION")),
        mode: mode.to_owned(),
        state: snapshot.state.clone(),
        error: snapshot.error.clone(),
        control_plane: engine.map(|e| ControlPlaneDoc {
            connected: e.control.connected,
            since_unix: e.control.since.and_then(unix),
            redials: e.control.redials,
            failed_dials: e.control.failed_dials,
            last_error: e.control.last_error.clone(),
        }),
        network: engine.map(network),
        workspaces,
        invalid_agents: snapshot.invalid_agents,
    }
}

fn network(e: &EngineSnapshot) -> NetworkDoc {
    let region = |id: i64| e.regions.get(&id).cloned();
    let stun: std::collections::BTreeMap<i64, Duration> =
        e.net.stun.latency.iter().copied().collect();
    let joined: std::collections::BTreeMap<i64, Duration> =
        e.derp_latency.iter().copied().collect();
    NetworkDoc {
        udp_port: e.net.port,
        stun_endpoints: e
            .net
            .stun
            .endpoints
            .iter()
            .map(ToString::to_string)
            .collect(),
        stun_requests: e.wg.stun.requests_sent,
        stun_responses: e.wg.stun.responses,
        direct_connections_disabled: e.direct_disabled,
        home_derp: e.wg.home_region.map(|id| RegionDoc {
            id,
            name: region(id),
        }),
        derp: e
            .wg
            .derp
            .iter()
            .map(|(id, s)| DerpDoc {
                id: *id,
                name: region(*id),
                connected: s.connected,
                reconnects: s.reconnects(),
                latency_ms: stun.get(id).or_else(|| joined.get(id)).copied().map(ms),
            })
            .collect(),
    }
}

/// The engine's peer for an agent: the one whose allowed IPs hold one of its addresses.
pub fn peer_of<'a>(a: &AgentView, engine: &'a EngineSnapshot) -> Option<&'a PeerStats> {
    let addrs: Vec<IpAddr> = a.ip_addrs.iter().filter_map(|s| s.parse().ok()).collect();
    engine.wg.peers.iter().find(|p| {
        p.allowed_ips
            .iter()
            .any(|n| addrs.iter().any(|ip| n.contains(ip)))
    })
}

fn agent(a: &AgentView, engine: Option<&EngineSnapshot>, now: SystemTime) -> AgentDoc {
    let peer = engine.and_then(|e| peer_of(a, e).map(|p| (e, p)));
    let path = match peer {
        Some((e, p)) => Some(match p.path {
            Some(Path::Direct { addr, .. }) => PathDoc::Direct {
                endpoint: Some(addr.to_string()),
            },
            _ => PathDoc::Derp {
                region_id: p.derp_region,
                region: p.derp_region.and_then(|id| e.regions.get(&id).cloned()),
            },
        }),
        None => match a.p2p {
            Some(true) => Some(PathDoc::Direct { endpoint: None }),
            Some(false) => Some(PathDoc::Derp {
                region_id: None,
                region: a.derp_region.clone(),
            }),
            None => None,
        },
    };
    let handshake = peer.and_then(|(_, p)| p.since_last_handshake);
    AgentDoc {
        id: a.id.clone(),
        name: a.name.clone(),
        host: a.host.clone(),
        fqdns: a.fqdns.clone(),
        addresses: a.ip_addrs.clone(),
        status: a.status,
        path,
        latency_ms: a.latency_ms,
        last_handshake_unix: match handshake {
            Some(age) => now.checked_sub(age).and_then(unix),
            None => a
                .handshake_age_secs
                .and_then(|s| now.checked_sub(Duration::from_secs(s)))
                .and_then(unix),
        },
        handshake_age_secs: handshake.map(|d| d.as_secs()).or(a.handshake_age_secs),
        rx_bytes: peer.map(|(_, p)| p.rx_bytes as u64),
        tx_bytes: peer.map(|(_, p)| p.tx_bytes as u64),
    }
}
