//! The session's owner task: the one place that holds the workspace state, the agents'
//! nodes and the coordination requests. It turns controller events into PeerUpdates
//! (to the manager), DNS zones (to the resolver), WireGuard peers (to the data plane) and
//! `add_tunnel`/`remove_tunnel`/`update_self` (to the coordinator), and sends the
//! 5-second status update (codervpn-protocol.md §7, tailnet.md §8).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use codervpn_dns::SharedZone;
use codervpn_proto::tailnet::coordinate_request::{Disconnect, Tunnel, UpdateSelf};
use codervpn_proto::tailnet::coordinate_response::peer_update::Kind;
use codervpn_proto::tailnet::{CoordinateRequest, CoordinateResponse, DerpMap, Node};
use codervpn_proto::vpn::{LastPing, PeerUpdate};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::controller::Event;
use super::netinfo::{self, HomeChooser, RegionLatencies};
use super::relays::RegionDialer;
use crate::net::disco::{DiscoPublicKey, Path};
use crate::net::runner::{NetReport, WgCommand};
use crate::net::wg::PeerConfig;
use crate::session::ManagerLink;
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

/// An agent's node as the coordinator last sent it.
pub(super) struct AgentPeer {
    key: [u8; 32],
    node: Node,
    node_at: Instant,
    programmed: bool,
    ready: bool,
    lost_at: Option<Instant>,
}

/// Requests from the session handle.
pub enum Control {
    /// Send `disconnect`, then answer.
    Stop(oneshot::Sender<()>),
    /// The system woke up: rebind the UDP socket, re-STUN, gather our endpoints again and
    /// re-probe every direct path.
    Wake,
}

/// Where our published endpoints come from (absent when direct connections are disabled).
#[derive(Debug, Clone, Copy)]
pub struct EndpointSource {
    /// Advertise loopback addresses too ([`super::JoinOptions::loopback_endpoints`]).
    pub loopback: bool,
}

/// How often our interface addresses are looked at again.
const ENDPOINT_REFRESH: Duration = Duration::from_secs(20);

pub struct Owner {
    pub link: ManagerLink,
    pub state: WorkspaceState,
    pub zone: Arc<SharedZone>,
    pub wg: mpsc::Sender<WgCommand>,
    pub snapshot: watch::Sender<PeerUpdate>,
    pub self_node: NodeInfo,
    pub derp_map: DerpMap,
    pub dialer: RegionDialer,
    pub home_region: i64,
    pub timings: OwnerTimings,
    pub endpoints: Option<EndpointSource>,
    /// The data plane's UDP port and STUN results.
    pub net: watch::Receiver<NetReport>,
    pub latencies: RegionLatencies,
    pub home: HomeChooser,
    pub(super) requests: Option<mpsc::UnboundedSender<CoordinateRequest>>,
    pub(super) peers: HashMap<[u8; 16], AgentPeer>,
    pub(super) regions: Vec<i64>,
    pub(super) rebind: super::rebind::RebindGate,
    /// Host network changes ([`crate::net::netmon`]); `None` where there is no monitor
    /// or direct connections are off.
    pub netmon: Option<mpsc::Receiver<()>>,
    /// Probes the tailnet websocket on a wake (a silent one is redialled).
    pub tailnet_probe: crate::session::rpc::ProbeHandle,
}

impl Owner {
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut control: mpsc::Receiver<Control>,
    ) {
        let mut status = tokio::time::interval(self.timings.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        status.tick().await;
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        let mut refresh = tokio::time::interval(ENDPOINT_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        self.probe_stun();
        let mut net_open = true;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.handle(ev).await,
                    None => return,
                },
                c = control.recv() => match c {
                    Some(Control::Stop(done)) => {
                        self.send(CoordinateRequest { disconnect: Some(Disconnect {}), ..Default::default() });
                        let _ = done.send(());
                        return;
                    }
                    Some(Control::Wake) => {
                        if self.rebind.allow(Instant::now(), self.timings.rebind_debounce) {
                            // The coordinator's websocket must answer a ping within 3 s, or
                            // the controller redials it (DERP: the runner probes on rebind).
                            self.tailnet_probe.probe(crate::net::derp::PROBE_TIMEOUT);
                            self.refresh_endpoints(true).await;
                        } else {
                            info!(debounce = ?self.timings.rebind_debounce, "wake soon after the last rebind: not rebinding again");
                        }
                    }
                    None => return,
                },
                r = self.net.changed(), if net_open => match r {
                    Ok(()) => self.net_changed().await,
                    Err(_) => net_open = false,
                },
                _ = refresh.tick() => { self.refresh_endpoints(false).await; }
                Some(()) = next_change(&mut self.netmon) => {
                    debug!("host network changed: gathering endpoints again");
                    self.refresh_endpoints(false).await;
                }
                _ = status.tick() => self.status_update().await,
                _ = housekeeping.tick() => self.housekeeping().await,
            }
        }
    }

    fn send(&self, req: CoordinateRequest) {
        if let Some(r) = &self.requests {
            let _ = r.send(req);
        }
    }

    fn tunnel(id: &[u8; 16]) -> Option<Tunnel> {
        Some(Tunnel { id: id.to_vec() })
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Connected { requests } => {
                self.requests = Some(requests);
                self.send(CoordinateRequest {
                    update_self: Some(UpdateSelf {
                        node: Some(self.self_node.to_proto()),
                    }),
                    ..Default::default()
                });
                let ids: Vec<[u8; 16]> = self.state.agent_ids().copied().collect();
                for id in ids {
                    self.send(CoordinateRequest {
                        add_tunnel: Self::tunnel(&id),
                        ..Default::default()
                    });
                }
            }
            Event::Disconnected { error } => {
                debug!(%error, "tailnet disconnected");
                self.requests = None;
            }
            Event::Workspace { update, snapshot } => match self.state.apply(&update, snapshot) {
                Ok(applied) => {
                    self.zone.store(self.state.zone());
                    let _ = self.snapshot.send(self.state.snapshot());
                    for id in &applied.removed_agents {
                        self.send(CoordinateRequest {
                            remove_tunnel: Self::tunnel(id),
                            ..Default::default()
                        });
                        self.remove_peer(id).await;
                    }
                    for id in &applied.added_agents {
                        self.send(CoordinateRequest {
                            add_tunnel: Self::tunnel(id),
                            ..Default::default()
                        });
                    }
                    let u = applied.peer_update;
                    let empty = u.upserted_workspaces.is_empty()
                        && u.upserted_agents.is_empty()
                        && u.deleted_workspaces.is_empty()
                        && u.deleted_agents.is_empty();
                    if !empty && let Err(e) = self.link.peer_update(u).await {
                        debug!(error = %e, "peer update not delivered");
                    }
                }
                Err(e) => warn!(error = %e, "workspace update refused"),
            },
            Event::Coordinate(resp) => self.coordinate(resp).await,
            Event::DerpMap(mut map) => {
                debug!(regions = map.regions.len(), "DERP map updated");
                // Keep the embedded relay pointed where the REST map pointed it (at the
                // access URL): from the embedded region's relay node, whatever our home is.
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
        }
    }

    async fn coordinate(&mut self, resp: CoordinateResponse) {
        for u in resp.peer_updates {
            let Ok(id) = <[u8; 16]>::try_from(u.id.as_slice()) else {
                warn!(len = u.id.len(), "peer update with a bad id");
                continue;
            };
            match Kind::try_from(u.kind).unwrap_or(Kind::Unspecified) {
                Kind::Node => {
                    let Some(node) = u.node else { continue };
                    if node.preferred_derp == 0 {
                        debug!("agent node without a DERP home yet; ignored");
                        continue;
                    }
                    let key = match decode_node_key(&node.key) {
                        Ok(k) => k,
                        Err(e) => {
                            warn!(error = %e, "agent node refused");
                            continue;
                        }
                    };
                    let now = Instant::now();
                    let reprogram = match self.peers.get_mut(&id) {
                        Some(p) if p.key == key => {
                            p.node = node;
                            p.lost_at = None;
                            p.programmed
                        }
                        old => {
                            if let Some(old) = old {
                                let _ = self.wg.send(WgCommand::RemovePeer(old.key)).await;
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
                        self.program(&id).await;
                    }
                }
                Kind::ReadyForHandshake => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.ready = true;
                    }
                    self.program(&id).await;
                }
                Kind::Disconnected => {
                    info!(reason = %u.reason, "agent disconnected");
                    self.remove_peer(&id).await;
                }
                Kind::Lost => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.lost_at.get_or_insert(Instant::now());
                    }
                }
                Kind::Unspecified => {}
            }
        }
    }

    /// Puts the agent's node into the data plane (again).
    async fn program(&mut self, id: &[u8; 16]) {
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
        let cmd = WgCommand::UpsertRelayedPeer {
            config: PeerConfig {
                public_key: p.key,
                preshared_key: None,
                allowed_ips,
                endpoint: None,
                persistent_keepalive: None,
            },
            derp_region: region,
        };
        let _ = self.wg.send(cmd).await;
        match decode_disco_key(&p.node.disco) {
            Ok(disco) => {
                let cmd = WgCommand::SetPeerDisco {
                    key: p.key,
                    disco: DiscoPublicKey::from_bytes(disco),
                    endpoints: parse_endpoints(&p.node.endpoints),
                };
                let _ = self.wg.send(cmd).await;
            }
            Err(e) => debug!(error = %e, "agent node without a usable disco key; DERP only"),
        }
        if region != self.home_region
            && !self.regions.contains(&region)
            && self.derp_map.regions.contains_key(&region)
        {
            self.regions.push(region);
            self.dialer.spawn(&self.derp_map, region, false);
        }
    }

    async fn remove_peer(&mut self, id: &[u8; 16]) {
        if let Some(p) = self.peers.remove(id) {
            let _ = self.wg.send(WgCommand::RemovePeer(p.key)).await;
        }
    }

    async fn housekeeping(&mut self) {
        let now = Instant::now();
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
            self.program(&id).await;
        }
    }

    /// Hands the STUN servers of the DERP map to the data plane (resolved in the
    /// background); none when direct connections are disabled.
    fn probe_stun(&self) {
        if self.endpoints.is_none() {
            return;
        }
        let (map, wg) = (self.derp_map.clone(), self.wg.clone());
        tokio::spawn(async move {
            let servers = netinfo::stun_servers(&map).await;
            debug!(count = servers.len(), "STUN servers from the DERP map");
            let _ = wg.send(WgCommand::SetStunServers(servers)).await;
        });
    }

    /// The data plane's port or STUN results changed: publish new latencies and endpoints.
    async fn net_changed(&mut self) {
        let report = self.net.borrow_and_update().clone();
        let map = &self.derp_map;
        let usable = |r: i64| {
            map.regions
                .get(&r)
                .is_some_and(|r| !r.avoid && r.nodes.iter().any(|n| !n.stun_only))
        };
        let home = self.home.choose(
            Instant::now(),
            self.home_region,
            &report.stun.latency,
            usable,
            netinfo::region_scores(map),
        );
        let mut changed = false;
        if home != self.home_region {
            self.switch_home(home).await;
            changed = true;
        }
        if self.latencies.update(&report) {
            self.self_node.derp_latency = self.latencies.published();
            changed = true;
        }
        // New endpoints publish the node themselves; otherwise publish it once here.
        if !self.refresh_endpoints(false).await && changed {
            self.publish_self();
        }
    }

    /// Moves our home DERP region to `region` (the old one stays connected for the peers
    /// homed there); the caller publishes it with `update_self`.
    async fn switch_home(&mut self, region: i64) {
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
            let _ = self.wg.send(WgCommand::SetHomeRegion(region)).await;
        } else {
            self.dialer.spawn(&self.derp_map, region, true);
        }
        if !self.regions.contains(&old) {
            self.regions.push(old);
        }
    }

    fn publish_self(&self) {
        self.send(CoordinateRequest {
            update_self: Some(UpdateSelf {
                node: Some(self.self_node.to_proto()),
            }),
            ..Default::default()
        });
    }

    /// Gathers our endpoints again (interfaces and STUN); a changed list is published with
    /// `update_self` and the data plane re-probes every direct path. On `wake` the data
    /// plane first rebinds its socket and re-STUNs. Returns whether anything was published.
    async fn refresh_endpoints(&mut self, wake: bool) -> bool {
        if wake {
            let _ = self.wg.send(WgCommand::Rebind).await;
        }
        let Some(src) = self.endpoints else {
            return false;
        };
        let report = self.net.borrow().clone();
        let Some(endpoints) = netinfo::our_endpoints(&report, src.loopback) else {
            return false;
        };
        if endpoints == self.self_node.endpoints {
            return false;
        }
        info!(?endpoints, "our endpoints changed");
        self.self_node.endpoints = endpoints.clone();
        let _ = self.wg.send(WgCommand::SetOwnEndpoints(endpoints)).await;
        self.publish_self();
        if !wake {
            let _ = self.wg.send(WgCommand::NetworkChanged).await;
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

    async fn status_update(&mut self) {
        let (tx, rx) = oneshot::channel();
        if self.wg.send(WgCommand::Stats(tx)).await.is_err() {
            return;
        }
        let Ok(stats) = rx.await else { return };
        let now = SystemTime::now();
        let by_key: HashMap<[u8; 32], [u8; 16]> =
            self.peers.iter().map(|(id, p)| (p.key, *id)).collect();
        let mut lost = Vec::new();
        for s in stats.peers {
            let Some(id) = by_key.get(&s.public_key) else {
                continue;
            };
            if let Some(since) = s.since_last_handshake {
                self.state.set_handshake(id, now - since);
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
                if p.lost_at
                    .is_some_and(|t| t.elapsed() >= self.timings.lost_timeout)
                    && stale
                {
                    lost.push(*id);
                }
            }
        }
        for id in lost {
            info!("lost agent without a handshake for 15 minutes; removing its peer");
            self.remove_peer(&id).await;
        }
        let _ = self.snapshot.send(self.state.snapshot());
        if let Some(u) = self.state.status_update()
            && let Err(e) = self.link.peer_update(u).await
        {
            debug!(error = %e, "status update not delivered");
        }
    }
}

/// The next change from the monitor; pending for ever without one (or once it has ended).
async fn next_change(netmon: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match netmon {
        Some(rx) => match rx.recv().await {
            Some(()) => Some(()),
            None => {
                *netmon = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}
