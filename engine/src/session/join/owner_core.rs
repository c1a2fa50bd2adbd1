//! The session owner's state, as a value you feed: controller events (tailnet connected or
//! gone, workspace updates, coordinate responses, DERP maps), what the data plane learnt
//! about the network, its stats, wakes and the time. What it decides waits in a queue of
//! [`Action`]s — coordinate requests, data-plane commands, PeerUpdates, DERP dials — for
//! the shell ([`super::owner`]) to carry out, in order. No channels, tasks or clocks here.
//!
//! It holds the workspace state, the agents' nodes and our own node, and turns the first
//! into PeerUpdates (to the manager), DNS zones (to the resolver), WireGuard peers (to the
//! data plane) and `add_tunnel`/`remove_tunnel`/`update_self` (to the coordinator), with the
//! 5-second status update (codervpn-protocol.md §7, tailnet.md §8).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use codervpn_dns::Zone;
use codervpn_proto::tailnet::coordinate_request::{Disconnect, Tunnel, UpdateSelf};
use codervpn_proto::tailnet::coordinate_response::peer_update::Kind;
use codervpn_proto::tailnet::{CoordinateRequest, CoordinateResponse, DerpMap, Node};
use codervpn_proto::vpn::{LastPing, PeerUpdate};
use tracing::{debug, info, warn};

use super::netinfo::{self, HomeChooser, RegionLatencies};
use super::rebind::RebindGate;
use crate::net::disco::{DiscoPublicKey, Path};
use crate::net::runner::{NetReport, WgCommand, WgStats};
use crate::net::wg::PeerConfig;
use crate::session::node::{
    NodeInfo, decode_disco_key, decode_node_key, parse_endpoints, parse_prefixes,
};
use crate::session::peers::{WorkspaceState, duration};

/// Timings of the owner.
#[derive(Debug, Clone)]
pub struct OwnerTimings {
    /// The status update's period (5 s).
    pub status_interval: Duration,
    /// Program a peer this long after its node arrived even without READY_FOR_HANDSHAKE.
    pub ready_timeout: Duration,
    /// Remove a LOST peer after this long without a handshake (15 min).
    pub lost_timeout: Duration,
    /// How long STUN rounds count when choosing the home DERP region (5 min).
    pub home_history: Duration,
    /// The least time between two wake-triggered rebinds (5 s, as upstream).
    pub rebind_debounce: Duration,
}

impl Default for OwnerTimings {
    fn default() -> Self {
        Self {
            status_interval: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(5),
            lost_timeout: Duration::from_secs(15 * 60),
            home_history: super::netinfo::HOME_HISTORY,
            rebind_debounce: super::rebind::REBIND_DEBOUNCE,
        }
    }
}

/// Where our published endpoints come from (absent when direct connections are disabled).
#[derive(Debug, Clone, Copy)]
pub struct EndpointSource {
    /// Advertise loopback addresses too ([`super::JoinOptions::loopback_endpoints`]).
    pub loopback: bool,
}

/// Something for the shell to do.
#[derive(Debug)]
pub enum Action {
    /// Send to the coordinator (dropped while the tailnet is down).
    Coordinate(CoordinateRequest),
    /// Send to the data plane.
    Wg(WgCommand),
    /// The DNS zone changed.
    Zone(Zone),
    /// The current peer list, for diagnostics.
    Snapshot(PeerUpdate),
    /// Send to the manager.
    PeerUpdate(PeerUpdate),
    /// Connect to a DERP region (`home`: it is our home region now).
    Dial { region: i64, home: bool },
    /// Resolve the STUN servers of this map and give them to the data plane.
    ResolveStun(DerpMap),
    /// Ask the tailnet websocket to prove it is alive (after a wake).
    ProbeTailnet,
    /// Fetch the data plane's stats and call [`OwnerCore::handle_stats`].
    FetchStats,
}

/// An agent's node as the coordinator last sent it.
#[derive(Debug)]
struct AgentPeer {
    key: [u8; 32],
    node: Node,
    node_at: Instant,
    programmed: bool,
    ready: bool,
    lost_at: Option<Instant>,
}

/// What the owner knows. See the module documentation.
pub struct OwnerCore {
    pub(super) state: WorkspaceState,
    pub(super) self_node: NodeInfo,
    pub(super) derp_map: DerpMap,
    pub(super) home_region: i64,
    pub(super) timings: OwnerTimings,
    pub(super) endpoints: Option<EndpointSource>,
    pub(super) latencies: RegionLatencies,
    pub(super) home: HomeChooser,
    /// The data plane's last report.
    net: NetReport,
    connected: bool,
    peers: HashMap<[u8; 16], AgentPeer>,
    /// Regions we dialled besides home.
    regions: Vec<i64>,
    rebind: RebindGate,
    actions: VecDeque<Action>,
}

impl OwnerCore {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: WorkspaceState,
        self_node: NodeInfo,
        derp_map: DerpMap,
        home_region: i64,
        timings: OwnerTimings,
        endpoints: Option<EndpointSource>,
        latencies: RegionLatencies,
    ) -> Self {
        let home = HomeChooser::new(timings.home_history);
        let mut core = Self {
            state,
            self_node,
            derp_map,
            home_region,
            timings,
            endpoints,
            latencies,
            home,
            net: NetReport::default(),
            connected: false,
            peers: HashMap::new(),
            regions: Vec::new(),
            rebind: RebindGate::default(),
            actions: VecDeque::new(),
        };
        core.probe_stun();
        core
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The tailnet connection came up: announce ourselves and every agent we know.
    pub fn handle_connected(&mut self) {
        self.connected = true;
        self.publish_self();
        let ids: Vec<[u8; 16]> = self.state.agent_ids().copied().collect();
        for id in ids {
            self.coordinate_tunnel(&id, true);
        }
    }

    /// The tailnet connection went; requests are dropped until it is back.
    pub fn handle_disconnected(&mut self, error: &str) {
        debug!(%error, "tailnet disconnected");
        self.connected = false;
    }

    /// A `WorkspaceUpdate` (`snapshot`: the first after a connect).
    pub fn handle_workspace(
        &mut self,
        update: &codervpn_proto::tailnet::WorkspaceUpdate,
        snapshot: bool,
    ) {
        match self.state.apply(update, snapshot) {
            Ok(applied) => {
                self.actions.push_back(Action::Zone(self.state.zone()));
                self.actions
                    .push_back(Action::Snapshot(self.state.snapshot()));
                for id in &applied.removed_agents {
                    self.coordinate_tunnel(id, false);
                    self.remove_peer(id);
                }
                for id in &applied.added_agents {
                    self.coordinate_tunnel(id, true);
                }
                let u = applied.peer_update;
                let empty = u.upserted_workspaces.is_empty()
                    && u.upserted_agents.is_empty()
                    && u.deleted_workspaces.is_empty()
                    && u.deleted_agents.is_empty();
                if !empty {
                    self.actions.push_back(Action::PeerUpdate(u));
                }
            }
            Err(e) => warn!(error = %e, "workspace update refused"),
        }
    }

    /// A new DERP map from the coordinator.
    pub fn handle_derp_map(&mut self, mut map: DerpMap) {
        debug!(regions = map.regions.len(), "DERP map updated");
        // Keep the embedded relay pointed where the REST map pointed it (at the access
        // URL): from the embedded region's relay node, whatever our home is.
        if let Some(base) = self
            .derp_map
            .regions
            .values()
            .filter(|r| r.embedded_relay)
            .find_map(|r| r.nodes.iter().find(|n| !n.stun_only))
            .cloned()
        {
            for r in map.regions.values_mut().filter(|r| r.embedded_relay) {
                for n in r.nodes.iter_mut().filter(|n| !n.stun_only) {
                    n.host_name = base.host_name.clone();
                    n.derp_port = base.derp_port;
                    n.force_http = base.force_http;
                }
            }
        }
        self.derp_map = map;
        self.probe_stun();
    }

    /// Agents' nodes, readiness and departures from the coordinator.
    pub fn handle_coordinate(&mut self, now: Instant, resp: CoordinateResponse) {
        for u in resp.peer_updates {
            let Ok(id) = <[u8; 16]>::try_from(u.id.as_slice()) else {
                warn!(len = u.id.len(), "peer update with a bad id");
                continue;
            };
            match Kind::try_from(u.kind).unwrap_or(Kind::Unspecified) {
                Kind::Node => {
                    let Some(node) = u.node else { continue };
                    self.node(now, id, node);
                }
                Kind::ReadyForHandshake => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.ready = true;
                    }
                    self.program(&id);
                }
                Kind::Disconnected => {
                    info!(reason = %u.reason, "agent disconnected");
                    self.remove_peer(&id);
                }
                Kind::Lost => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.lost_at.get_or_insert(now);
                    }
                }
                Kind::Unspecified => {}
            }
        }
    }

    fn node(&mut self, now: Instant, id: [u8; 16], node: Node) {
        if node.preferred_derp == 0 {
            debug!("agent node without a DERP home yet; ignored");
            return;
        }
        let key = match decode_node_key(&node.key) {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "agent node refused");
                return;
            }
        };
        let reprogram = match self.peers.get_mut(&id) {
            Some(p) if p.key == key => {
                p.node = node;
                p.lost_at = None;
                p.programmed
            }
            old => {
                if let Some(old) = old {
                    let key = old.key;
                    self.actions
                        .push_back(Action::Wg(WgCommand::RemovePeer(key)));
                }
                self.peers.insert(
                    id,
                    AgentPeer {
                        key,
                        node,
                        node_at: now,
                        programmed: false,
                        ready: false,
                        lost_at: None,
                    },
                );
                false
            }
        };
        if reprogram {
            self.program(&id);
        }
    }

    /// Every half second: peers whose READY_FOR_HANDSHAKE did not come are programmed
    /// anyway.
    pub fn handle_housekeeping(&mut self, now: Instant) {
        let due: Vec<[u8; 16]> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                !p.programmed && now.duration_since(p.node_at) >= self.timings.ready_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            debug!("no READY_FOR_HANDSHAKE in time; programming the peer anyway");
            self.program(&id);
        }
    }

    /// The data plane's port or STUN results changed: choose the home region again and
    /// publish new latencies and endpoints.
    pub fn handle_net_report(&mut self, now: Instant, report: NetReport) {
        self.net = report;
        let map = &self.derp_map;
        let usable = |r: i64| {
            map.regions
                .get(&r)
                .is_some_and(|r| !r.avoid && r.nodes.iter().any(|n| !n.stun_only))
        };
        let home = self.home.choose(
            now,
            self.home_region,
            &self.net.stun.latency,
            usable,
            netinfo::region_scores(map),
        );
        let mut changed = false;
        if home != self.home_region {
            self.switch_home(home);
            changed = true;
        }
        if self.latencies.update(&self.net) {
            self.self_node.derp_latency = self.latencies.published();
            changed = true;
        }
        // New endpoints publish the node themselves; otherwise publish it once here.
        if !self.refresh_endpoints(false) && changed {
            self.publish_self();
        }
    }

    /// Our interfaces may have changed (a periodic look, or the host said so); `report` is
    /// the data plane's latest.
    pub fn handle_refresh(&mut self, report: NetReport) {
        self.net = report;
        self.refresh_endpoints(false);
    }

    /// The system woke up: rebind the UDP socket, probe the tailnet websocket, gather our
    /// endpoints again — unless the last wake was a moment ago.
    pub fn handle_wake(&mut self, now: Instant) {
        if !self.rebind.allow(now, self.timings.rebind_debounce) {
            info!(debounce = ?self.timings.rebind_debounce, "wake soon after the last rebind: not rebinding again");
            return;
        }
        // The coordinator's websocket must answer a ping within 3 s, or the controller
        // redials it (DERP: the runner probes on rebind).
        self.actions.push_back(Action::ProbeTailnet);
        self.refresh_endpoints(true);
    }

    /// We are leaving: tell the coordinator.
    pub fn handle_stop(&mut self) {
        self.coordinate(CoordinateRequest {
            disconnect: Some(Disconnect {}),
            ..Default::default()
        });
    }

    /// Time for the status update: fetch the data plane's stats first.
    pub fn handle_status_tick(&mut self) {
        self.actions.push_back(Action::FetchStats);
    }

    /// The data plane's stats: handshakes and pings into the workspace state, lost peers
    /// removed, the status update to the manager.
    pub fn handle_stats(&mut self, now: Instant, wall: SystemTime, stats: WgStats) {
        let by_key: HashMap<[u8; 32], [u8; 16]> =
            self.peers.iter().map(|(id, p)| (p.key, *id)).collect();
        let mut lost = Vec::new();
        for s in stats.peers {
            let Some(id) = by_key.get(&s.public_key) else {
                continue;
            };
            if let Some(since) = s.since_last_handshake {
                self.state.set_handshake(id, wall - since);
            }
            // The latest ping result; an earlier one stays until a new one arrives.
            let ping = match (s.path, s.relay_latency) {
                (Some(Path::Direct { latency, .. }), _) => Some((latency, true, self.home_region)),
                (Some(Path::Derp), Some(latency)) => {
                    let region = self.peers.get(id).map(|p| i64::from(p.node.preferred_derp));
                    Some((latency, false, region.unwrap_or(self.home_region)))
                }
                _ => None,
            };
            if let Some((latency, did_p2p, region)) = ping {
                let ping = LastPing {
                    latency: Some(duration(latency)),
                    did_p2p,
                    preferred_derp: self.region_name(region),
                    preferred_derp_latency: self.latencies.get(region).map(duration),
                };
                self.state.set_ping(id, ping);
            }
            if let Some(p) = self.peers.get(id) {
                let stale = s
                    .since_last_handshake
                    .is_none_or(|d| d >= self.timings.lost_timeout);
                let lost_long = p
                    .lost_at
                    .is_some_and(|t| now.duration_since(t) >= self.timings.lost_timeout);
                if lost_long && stale {
                    lost.push(*id);
                }
            }
        }
        for id in lost {
            info!("lost agent without a handshake for 15 minutes; removing its peer");
            self.remove_peer(&id);
        }
        self.actions
            .push_back(Action::Snapshot(self.state.snapshot()));
        if let Some(u) = self.state.status_update() {
            self.actions.push_back(Action::PeerUpdate(u));
        }
    }

    /// Our home region, for diagnostics.
    pub fn home_region(&self) -> i64 {
        self.home_region
    }

    fn coordinate(&mut self, req: CoordinateRequest) {
        if self.connected {
            self.actions.push_back(Action::Coordinate(req));
        }
    }

    fn coordinate_tunnel(&mut self, id: &[u8; 16], add: bool) {
        let tunnel = Some(Tunnel { id: id.to_vec() });
        self.coordinate(if add {
            CoordinateRequest {
                add_tunnel: tunnel,
                ..Default::default()
            }
        } else {
            CoordinateRequest {
                remove_tunnel: tunnel,
                ..Default::default()
            }
        });
    }

    /// Puts the agent's node into the data plane (again).
    fn program(&mut self, id: &[u8; 16]) {
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        let allowed_ips = match parse_prefixes(&p.node.allowed_ips) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "agent node refused");
                return;
            }
        };
        p.programmed = true;
        let region = i64::from(p.node.preferred_derp);
        self.actions
            .push_back(Action::Wg(WgCommand::UpsertRelayedPeer {
                config: PeerConfig {
                    public_key: p.key,
                    preshared_key: None,
                    allowed_ips,
                    endpoint: None,
                    persistent_keepalive: None,
                },
                derp_region: region,
            }));
        match decode_disco_key(&p.node.disco) {
            Ok(disco) => self.actions.push_back(Action::Wg(WgCommand::SetPeerDisco {
                key: p.key,
                disco: DiscoPublicKey::from_bytes(disco),
                endpoints: parse_endpoints(&p.node.endpoints),
            })),
            Err(e) => debug!(error = %e, "agent node without a usable disco key; DERP only"),
        }
        if region != self.home_region
            && !self.regions.contains(&region)
            && self.derp_map.regions.contains_key(&region)
        {
            self.regions.push(region);
            self.actions.push_back(Action::Dial {
                region,
                home: false,
            });
        }
    }

    fn remove_peer(&mut self, id: &[u8; 16]) {
        if let Some(p) = self.peers.remove(id) {
            self.actions
                .push_back(Action::Wg(WgCommand::RemovePeer(p.key)));
        }
    }

    /// The STUN servers of the DERP map, for the data plane; none when direct connections
    /// are disabled.
    fn probe_stun(&mut self) {
        if self.endpoints.is_some() {
            self.actions
                .push_back(Action::ResolveStun(self.derp_map.clone()));
        }
    }

    /// Moves our home DERP region to `region` (the old one stays connected for the peers
    /// homed there); the caller publishes it with `update_self`.
    fn switch_home(&mut self, region: i64) {
        let old = self.home_region;
        info!(
            from = %self.region_name(old),
            to = %self.region_name(region),
            "DERP home region changed: {} is clearly closer",
            self.region_name(region)
        );
        self.home_region = region;
        self.self_node.preferred_derp = region;
        if self.regions.contains(&region) {
            self.regions.retain(|r| *r != region);
            self.actions
                .push_back(Action::Wg(WgCommand::SetHomeRegion(region)));
        } else {
            self.actions.push_back(Action::Dial { region, home: true });
        }
        if !self.regions.contains(&old) {
            self.regions.push(old);
        }
    }

    fn publish_self(&mut self) {
        self.coordinate(CoordinateRequest {
            update_self: Some(UpdateSelf {
                node: Some(self.self_node.to_proto()),
            }),
            ..Default::default()
        });
    }

    /// Gathers our endpoints again (interfaces and STUN); a changed list is published with
    /// `update_self` and the data plane re-probes every direct path. On `wake` the data
    /// plane first rebinds its socket and re-STUNs. Returns whether anything was published.
    fn refresh_endpoints(&mut self, wake: bool) -> bool {
        if wake {
            self.actions.push_back(Action::Wg(WgCommand::Rebind));
        }
        let Some(src) = self.endpoints else {
            return false;
        };
        let Some(endpoints) = netinfo::our_endpoints(&self.net, src.loopback) else {
            return false;
        };
        if endpoints == self.self_node.endpoints {
            return false;
        }
        info!(?endpoints, "our endpoints changed");
        self.self_node.endpoints = endpoints.clone();
        self.actions
            .push_back(Action::Wg(WgCommand::SetOwnEndpoints(endpoints)));
        self.publish_self();
        if !wake {
            self.actions
                .push_back(Action::Wg(WgCommand::NetworkChanged));
        }
        true
    }

    /// The name of a DERP region (its id when the map has no name for it).
    fn region_name(&self, region: i64) -> String {
        match self.derp_map.regions.get(&region) {
            Some(r) if !r.region_name.is_empty() => r.region_name.clone(),
            _ => region.to_string(),
        }
    }
}

#[cfg(test)]
#[path = "owner_core_tests.rs"]
mod tests;
