//! Workspace state and the `PeerUpdate`s it produces (codervpn-protocol.md §7). Sans-IO:
//! `WorkspaceUpdate`s in, `PeerUpdate`s and DNS zones out; times are passed in.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use codervpn_dns::{AgentInfo, Zone, ZoneConfig, agent_fqdns, coder_addr};
use codervpn_proto::tailnet;
use codervpn_proto::vpn::{self, LastPing};

/// Go's zero `time.Time` as a protobuf timestamp: "never handshaken".
pub const ZERO_TIME_SECONDS: i64 = -62_135_596_800;

/// A `WorkspaceUpdate` the stream must be closed for (tailnet.md §6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("{what} id is {len} bytes; want a 16-byte UUID")]
    BadId { what: &'static str, len: usize },
    #[error("agent {agent} names workspace {workspace}, which is unknown")]
    UnknownWorkspace { agent: String, workspace: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct WorkspaceEntry {
    name: String,
    status: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AgentEntry {
    name: String,
    workspace_id: [u8; 16],
    fqdn: Vec<String>,
    ip_addrs: Vec<String>,
}

/// What applying one update changed, beyond the `PeerUpdate` for the manager.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub peer_update: vpn::PeerUpdate,
    /// Agents that are new (add a tunnel to each).
    pub added_agents: Vec<[u8; 16]>,
    /// Agents that are gone (remove their tunnel and peer).
    pub removed_agents: Vec<[u8; 16]>,
}

/// Every workspace and agent the user has, as the tunnel knows them.
#[derive(Debug, Clone)]
pub struct WorkspaceState {
    owner: String,
    zone_config: ZoneConfig,
    workspaces: BTreeMap<[u8; 16], WorkspaceEntry>,
    agents: BTreeMap<[u8; 16], AgentEntry>,
    handshakes: HashMap<[u8; 16], SystemTime>,
    pings: HashMap<[u8; 16], LastPing>,
}

fn id16(what: &'static str, b: &[u8]) -> Result<[u8; 16], UpdateError> {
    b.try_into()
        .map_err(|_| UpdateError::BadId { what, len: b.len() })
}

fn uuid_text(id: &[u8; 16]) -> String {
    codervpn_dns::Uuid(*id).to_string()
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => prost_types::Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        },
        Err(_) => prost_types::Timestamp {
            seconds: ZERO_TIME_SECONDS,
            nanos: 0,
        },
    }
}

/// A protobuf duration.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

impl WorkspaceState {
    pub fn new(owner: &str, zone_config: ZoneConfig) -> Self {
        Self {
            owner: owner.to_owned(),
            zone_config,
            workspaces: BTreeMap::new(),
            agents: BTreeMap::new(),
            handshakes: HashMap::new(),
            pings: HashMap::new(),
        }
    }

    /// Applies one update; with `snapshot`, whatever the update does not upsert is deleted
    /// first (§7.2). Nothing changes when the update is refused.
    pub fn apply(
        &mut self,
        update: &tailnet::WorkspaceUpdate,
        snapshot: bool,
    ) -> Result<Applied, UpdateError> {
        let mut next = self.clone();
        let mut out = Applied::default();
        let mut deleted_ws: Vec<([u8; 16], WorkspaceEntry)> = Vec::new();
        let mut deleted_agents: Vec<([u8; 16], AgentEntry, bool)> = Vec::new();
        if snapshot {
            let keep_ws: Vec<[u8; 16]> = update
                .upserted_workspaces
                .iter()
                .map(|w| id16("workspace", &w.id))
                .collect::<Result<_, _>>()?;
            let keep_agents: Vec<[u8; 16]> = update
                .upserted_agents
                .iter()
                .map(|a| id16("agent", &a.id))
                .collect::<Result<_, _>>()?;
            for (id, a) in &self.agents {
                if !keep_agents.contains(id) {
                    deleted_agents.push((*id, a.clone(), true));
                }
            }
            for (id, w) in &self.workspaces {
                if !keep_ws.contains(id) {
                    deleted_ws.push((*id, w.clone()));
                }
            }
        }
        for a in &update.deleted_agents {
            let id = id16("agent", &a.id)?;
            let workspace_id = id16("workspace", &a.workspace_id)?;
            let known = self.agents.get(&id).cloned();
            let entry = known.unwrap_or(AgentEntry {
                name: a.name.clone(),
                workspace_id,
                fqdn: Vec::new(),
                ip_addrs: Vec::new(),
            });
            deleted_agents.push((id, entry, false));
        }
        for w in &update.deleted_workspaces {
            let id = id16("workspace", &w.id)?;
            deleted_ws.push((
                id,
                WorkspaceEntry {
                    name: w.name.clone(),
                    status: w.status,
                },
            ));
        }
        for (id, a, synthesized) in deleted_agents {
            if next.agents.remove(&id).is_some() {
                out.removed_agents.push(id);
            }
            next.handshakes.remove(&id);
            next.pings.remove(&id);
            out.peer_update.deleted_agents.push(vpn::Agent {
                id: id.to_vec(),
                name: a.name,
                workspace_id: a.workspace_id.to_vec(),
                fqdn: if synthesized { Vec::new() } else { a.fqdn },
                ip_addrs: if synthesized { Vec::new() } else { a.ip_addrs },
                last_handshake: None,
                last_ping: None,
            });
        }
        for (id, w) in deleted_ws {
            next.workspaces.remove(&id);
            out.peer_update.deleted_workspaces.push(vpn::Workspace {
                id: id.to_vec(),
                name: w.name,
                status: w.status,
            });
        }
        for w in &update.upserted_workspaces {
            let id = id16("workspace", &w.id)?;
            next.workspaces.insert(
                id,
                WorkspaceEntry {
                    name: w.name.clone(),
                    status: w.status,
                },
            );
        }
        let mut upserted = Vec::new();
        for a in &update.upserted_agents {
            let id = id16("agent", &a.id)?;
            let workspace_id = id16("workspace", &a.workspace_id)?;
            if !next.agents.contains_key(&id) {
                out.added_agents.push(id);
            }
            next.agents.insert(
                id,
                AgentEntry {
                    name: a.name.clone(),
                    workspace_id,
                    fqdn: Vec::new(),
                    ip_addrs: vec![coder_addr(id).to_string()],
                },
            );
            upserted.push(id);
        }
        for (id, a) in &next.agents {
            if !next.workspaces.contains_key(&a.workspace_id) {
                return Err(UpdateError::UnknownWorkspace {
                    agent: uuid_text(id),
                    workspace: uuid_text(&a.workspace_id),
                });
            }
        }
        next.refresh_names();
        out.peer_update.upserted_workspaces = update
            .upserted_workspaces
            .iter()
            .map(|w| vpn::Workspace {
                id: w.id.clone(),
                name: w.name.clone(),
                status: w.status,
            })
            .collect();
        out.peer_update.upserted_agents = upserted.iter().map(|id| next.agent_proto(id)).collect();
        sort_update(&mut out.peer_update);
        *self = next;
        Ok(out)
    }

    /// Recomputes every agent's names (the single-agent shortcut depends on its siblings).
    fn refresh_names(&mut self) {
        let mut per_ws: HashMap<[u8; 16], usize> = HashMap::new();
        for a in self.agents.values() {
            *per_ws.entry(a.workspace_id).or_default() += 1;
        }
        let suffix = self.zone_config.suffix().to_owned();
        let infos: Vec<([u8; 16], AgentInfo, usize)> = self
            .agents
            .iter()
            .map(|(id, a)| {
                let ws = self
                    .workspaces
                    .get(&a.workspace_id)
                    .map(|w| w.name.clone())
                    .unwrap_or_default();
                let n = per_ws.get(&a.workspace_id).copied().unwrap_or(1);
                (
                    *id,
                    AgentInfo {
                        id: *id,
                        name: a.name.clone(),
                        workspace: ws,
                        owner: self.owner.clone(),
                    },
                    n,
                )
            })
            .collect();
        for (id, info, n) in infos {
            if let Some(a) = self.agents.get_mut(&id) {
                a.fqdn = agent_fqdns(&info, n, &suffix).unwrap_or_default();
            }
        }
    }

    fn agent_proto(&self, id: &[u8; 16]) -> vpn::Agent {
        let a = &self.agents[id];
        vpn::Agent {
            id: id.to_vec(),
            name: a.name.clone(),
            workspace_id: a.workspace_id.to_vec(),
            fqdn: a.fqdn.clone(),
            ip_addrs: a.ip_addrs.clone(),
            last_handshake: Some(self.handshakes.get(id).map(|t| timestamp(*t)).unwrap_or(
                prost_types::Timestamp {
                    seconds: ZERO_TIME_SECONDS,
                    nanos: 0,
                },
            )),
            last_ping: self.pings.get(id).cloned(),
        }
    }

    /// Every workspace and agent as upserts (the `get_peer_update` reply).
    pub fn snapshot(&self) -> vpn::PeerUpdate {
        let mut u = vpn::PeerUpdate {
            upserted_workspaces: self
                .workspaces
                .iter()
                .map(|(id, w)| vpn::Workspace {
                    id: id.to_vec(),
                    name: w.name.clone(),
                    status: w.status,
                })
                .collect(),
            upserted_agents: self.agents.keys().map(|id| self.agent_proto(id)).collect(),
            ..Default::default()
        };
        sort_update(&mut u);
        u
    }

    /// The 5-second status update: every agent, upserted, with its handshake and ping;
    /// `None` without agents.
    pub fn status_update(&self) -> Option<vpn::PeerUpdate> {
        if self.agents.is_empty() {
            return None;
        }
        let mut u = vpn::PeerUpdate {
            upserted_agents: self.agents.keys().map(|id| self.agent_proto(id)).collect(),
            ..Default::default()
        };
        sort_update(&mut u);
        Some(u)
    }

    /// Records the latest WireGuard handshake with `agent`.
    pub fn set_handshake(&mut self, agent: &[u8; 16], at: SystemTime) {
        if self.agents.contains_key(agent) {
            self.handshakes.insert(*agent, at);
        }
    }

    /// Records a successful ping; kept until a later one replaces it.
    pub fn set_ping(&mut self, agent: &[u8; 16], ping: LastPing) {
        if self.agents.contains_key(agent) {
            self.pings.insert(*agent, ping);
        }
    }

    /// The DNS zone for the current agents.
    pub fn zone(&self) -> Zone {
        let mut agents = Vec::with_capacity(self.agents.len());
        for (id, a) in &self.agents {
            let ws = self
                .workspaces
                .get(&a.workspace_id)
                .map(|w| w.name.clone())
                .unwrap_or_default();
            agents.push(AgentInfo {
                id: *id,
                name: a.name.clone(),
                workspace: ws,
                owner: self.owner.clone(),
            });
        }
        Zone::new(self.zone_config.clone(), &agents)
    }

    /// Known agent ids.
    pub fn agent_ids(&self) -> impl Iterator<Item = &[u8; 16]> {
        self.agents.keys()
    }

    /// `(agent name, workspace name)` of an agent.
    pub fn agent_names(&self, id: &[u8; 16]) -> Option<(&str, &str)> {
        let a = self.agents.get(id)?;
        let w = self.workspaces.get(&a.workspace_id)?;
        Some((a.name.as_str(), w.name.as_str()))
    }
}

/// Sorts workspaces and agents by name, then id (reproducible output).
fn sort_update(u: &mut vpn::PeerUpdate) {
    for list in [&mut u.upserted_workspaces, &mut u.deleted_workspaces] {
        list.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    }
    for list in [&mut u.upserted_agents, &mut u.deleted_agents] {
        list.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    }
}

#[cfg(test)]
#[path = "peers_tests.rs"]
mod tests;
