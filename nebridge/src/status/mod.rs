//! The status surface: the tunnel state and peers built from `PeerUpdate`s
//! (manager-behaviour.md §6), a unix-socket server streaming it as JSON lines, and the
//! client and table used by `codervpn status`.
//!
//! Wire format: one JSON object per line. On connect the server sends the current
//! [`StatusSnapshot`], then one line per change (a slow reader skips to the newest). A
//! refused client gets one `{"error": "…"}` line and the socket is closed.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use codervpn_proto::vpn;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Default path of the status socket.
pub const DEFAULT_SOCKET: &str = "/run/codervpn/status.sock";
/// A handshake older than this is shown red (manager-behaviour.md §6.2).
pub const HANDSHAKE_STALE_AFTER: Duration = Duration::from_secs(5 * 60);
/// Ping latency from which an agent is shown yellow (§6.2: green below 150 ms).
pub const HIGH_LATENCY: Duration = Duration::from_millis(150);

// ---- model -------------------------------------------------------------------------------

/// The tunnel's lifecycle as users see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TunnelState {
    #[default]
    Stopped,
    Starting,
    Started,
    Stopping,
    Failed(String),
}

/// Workspaces and agents as the macOS app keeps them (manager-behaviour.md §6.1). Sans-IO.
#[derive(Clone, Debug, Default)]
pub struct PeerModel {
    workspaces: BTreeMap<[u8; 16], Workspace>,
    agents: BTreeMap<[u8; 16], vpn::Agent>,
    /// Agents without a known workspace, without FQDNs or with a bad UUID; re-linked when
    /// their workspace arrives.
    invalid_agents: Vec<vpn::Agent>,
}

#[derive(Clone, Debug)]
struct Workspace {
    name: String,
    status: i32,
}

/// One agent's status dot (§6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// A workspace row with no agents (grey).
    Off,
    /// No handshake yet.
    Connecting,
    /// Last handshake older than 5 minutes (red).
    NoRecentHandshake,
    /// Green.
    Okay,
    /// Latency ≥ 150 ms (yellow).
    HighLatency,
}

/// Everything `codervpn status` shows; one JSON line on the socket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// `stopped`, `starting`, `started`, `stopping` or `failed`.
    pub state: String,
    /// The failure, for `failed`.
    pub error: Option<String>,
    /// Workspaces sorted by name, then id.
    pub workspaces: Vec<WorkspaceView>,
    pub invalid_agents: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceView {
    pub id: String,
    /// Lower-cased.
    pub name: String,
    /// The workspace build status, lower-case (`running`, `stopped`, …).
    pub status: String,
    /// Sorted by name, then id.
    pub agents: Vec<AgentView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    /// The first FQDN without its trailing dot: the host users connect to.
    pub host: Option<String>,
    pub fqdns: Vec<String>,
    pub ip_addrs: Vec<String>,
    pub status: AgentStatus,
    /// Seconds since the last handshake when the snapshot was taken.
    pub handshake_age_secs: Option<u64>,
    pub latency_ms: Option<f64>,
    pub p2p: Option<bool>,
    pub derp_region: Option<String>,
    pub derp_latency_ms: Option<f64>,
}

impl TunnelState {
    fn name(&self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Started => "started",
            Self::Stopping => "stopping",
            Self::Failed(_) => "failed",
        }
    }
}

impl PeerModel {
    /// Applies one update in the app's order: deleted agents, deleted workspaces, upserted
    /// workspaces, upserted agents.
    pub fn apply(&mut self, update: &vpn::PeerUpdate) {
        for agent in &update.deleted_agents {
            self.delete_agent(&agent.id);
        }
        for ws in &update.deleted_workspaces {
            self.delete_workspace(&ws.id);
        }
        for ws in &update.upserted_workspaces {
            self.upsert_workspace(ws);
        }
        for agent in &update.upserted_agents {
            self.upsert_agent(agent.clone());
        }
    }

    /// Forgets everything (before re-applying a full `get_peer_update` reply, or on stop).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The view at `now` with tunnel state `state`.
    pub fn snapshot(&self, state: &TunnelState, now: SystemTime) -> StatusSnapshot {
        let mut workspaces: Vec<WorkspaceView> = self
            .workspaces
            .iter()
            .map(|(id, ws)| {
                let mut agents: Vec<AgentView> = self
                    .agents
                    .values()
                    .filter(|a| a.workspace_id == id)
                    .map(|a| agent_view(a, now))
                    .collect();
                agents.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
                WorkspaceView {
                    id: uuid_text(id),
                    name: ws.name.clone(),
                    status: workspace_status_name(ws.status),
                    agents,
                }
            })
            .collect();
        workspaces.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        StatusSnapshot {
            state: state.name().to_owned(),
            error: match state {
                TunnelState::Failed(e) => Some(e.clone()),
                TunnelState::Stopped
                | TunnelState::Starting
                | TunnelState::Started
                | TunnelState::Stopping => None,
            },
            workspaces,
            invalid_agents: self.invalid_agents.len(),
        }
    }

    fn delete_agent(&mut self, id: &[u8]) {
        if let Ok(id) = <[u8; 16]>::try_from(id) {
            self.agents.remove(&id);
        }
        self.invalid_agents.retain(|a| a.id != id);
    }

    fn delete_workspace(&mut self, id: &[u8]) {
        let Ok(id) = <[u8; 16]>::try_from(id) else {
            return;
        };
        self.agents.retain(|_, a| a.workspace_id != id);
        self.workspaces.remove(&id);
    }

    fn upsert_workspace(&mut self, ws: &vpn::Workspace) {
        let Ok(id) = <[u8; 16]>::try_from(ws.id.as_slice()) else {
            return;
        };
        self.workspaces.insert(
            id,
            Workspace {
                name: ws.name.to_lowercase(),
                status: ws.status,
            },
        );
        let (relink, keep) = std::mem::take(&mut self.invalid_agents)
            .into_iter()
            .partition(|a| a.workspace_id == ws.id);
        self.invalid_agents = keep;
        for agent in relink {
            self.upsert_agent(agent);
        }
    }

    fn upsert_agent(&mut self, agent: vpn::Agent) {
        // An upsert replaces what was known of the agent, set aside or not: the tunnel
        // re-sends every agent with each status update, so appending would grow the list
        // every 5 s for an agent that stays invalid.
        self.invalid_agents.retain(|a| a.id != agent.id);
        let ids = <[u8; 16]>::try_from(agent.id.as_slice())
            .ok()
            .zip(<[u8; 16]>::try_from(agent.workspace_id.as_slice()).ok());
        let Some((id, ws)) = ids.filter(|(_, ws)| self.workspaces.contains_key(ws)) else {
            self.invalid_agents.push(agent);
            return;
        };
        if agent.fqdn.is_empty() {
            self.invalid_agents.push(agent);
            return;
        }
        // A new agent with the same name in the same workspace replaces the older one.
        self.agents
            .retain(|old, a| *old == id || !(a.name == agent.name && a.workspace_id == ws));
        self.agents.insert(id, agent);
    }
}

/// The status dot of an agent (§6.2), evaluated in the spec's order. `last_handshake` is
/// `None` when absent or the Go zero time (any time at or before the Unix epoch).
pub fn agent_status(
    last_handshake: Option<SystemTime>,
    latency: Option<Duration>,
    now: SystemTime,
) -> AgentStatus {
    let Some(handshake) = last_handshake else {
        return AgentStatus::Connecting;
    };
    if now.duration_since(handshake).unwrap_or_default() > HANDSHAKE_STALE_AFTER {
        return AgentStatus::NoRecentHandshake;
    }
    match latency {
        Some(l) if l >= HIGH_LATENCY => AgentStatus::HighLatency,
        Some(_) | None => AgentStatus::Okay,
    }
}

fn agent_view(a: &vpn::Agent, now: SystemTime) -> AgentView {
    let handshake = a
        .last_handshake
        .as_ref()
        .filter(|t| t.seconds > 0)
        .map(|t| {
            SystemTime::UNIX_EPOCH
                + Duration::new(
                    t.seconds.unsigned_abs(),
                    t.nanos.clamp(0, 999_999_999) as u32,
                )
        });
    let ping = a.last_ping.as_ref();
    let latency = ping.and_then(|p| p.latency.as_ref()).and_then(duration);
    let fqdns: Vec<String> = a
        .fqdn
        .iter()
        .map(|f| f.trim_end_matches('.').to_owned())
        .collect();
    AgentView {
        id: uuid_text(&a.id),
        name: a.name.clone(),
        host: fqdns.first().cloned(),
        fqdns,
        ip_addrs: a.ip_addrs.clone(),
        status: agent_status(handshake, latency, now),
        handshake_age_secs: handshake.map(|h| now.duration_since(h).unwrap_or_default().as_secs()),
        latency_ms: latency.map(|l| l.as_secs_f64() * 1000.0),
        p2p: ping.map(|p| p.did_p2p),
        derp_region: ping
            .map(|p| p.preferred_derp.clone())
            .filter(|r| !r.is_empty()),
        derp_latency_ms: ping
            .and_then(|p| p.preferred_derp_latency.as_ref())
            .and_then(duration)
            .map(|l| l.as_secs_f64() * 1000.0),
    }
}

fn duration(d: &prost_types::Duration) -> Option<Duration> {
    Duration::try_from(*d).ok()
}

fn uuid_text(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    if hex.len() != 32 {
        return hex;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn workspace_status_name(status: i32) -> String {
    vpn::workspace::Status::try_from(status)
        .map(|s| s.as_str_name().to_lowercase())
        .unwrap_or_else(|_| format!("status {status}"))
}

// ---- publisher ---------------------------------------------------------------------------

/// The single owner of the tunnel state and the peer model; publishes a new
/// [`StatusSnapshot`] to every subscriber when either changes.
pub struct StatusPublisher {
    state: TunnelState,
    model: PeerModel,
    tx: watch::Sender<Arc<StatusSnapshot>>,
}

impl StatusPublisher {
    pub fn new() -> Self {
        let state = TunnelState::default();
        let model = PeerModel::default();
        let (tx, _) = watch::channel(Arc::new(model.snapshot(&state, SystemTime::now())));
        Self { state, model, tx }
    }

    /// A receiver for [`StatusServer::serve`] or anything else that watches.
    pub fn subscribe(&self) -> watch::Receiver<Arc<StatusSnapshot>> {
        self.tx.subscribe()
    }

    pub fn set_state(&mut self, state: TunnelState, now: SystemTime) {
        self.state = state;
        self.publish(now);
    }

    pub fn peer_update(&mut self, update: &vpn::PeerUpdate, now: SystemTime) {
        self.model.apply(update);
        self.publish(now);
    }

    /// Clears the peers (on stop, or before applying a full `get_peer_update` reply).
    pub fn clear_peers(&mut self, now: SystemTime) {
        self.model.clear();
        self.publish(now);
    }

    fn publish(&self, now: SystemTime) {
        let snap = self.model.snapshot(&self.state, now);
        self.tx.send_if_modified(|cur| {
            if **cur == snap {
                return false;
            }
            *cur = Arc::new(snap);
            true
        });
    }
}

impl Default for StatusPublisher {
    fn default() -> Self {
        Self::new()
    }
}

mod client;
mod server;

pub use client::*;
pub use server::*;

#[cfg(test)]
mod tests;
