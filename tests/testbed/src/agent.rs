//! Simulated workspace agents. Each runs our WireGuard data plane on a smoltcp stack (the
//! engine's userspace device) that answers ping, a TCP echo service and a small HTTP page,
//! reaches clients through the testbed's DERP relay over a real TCP connection, and
//! learns its clients' nodes from the coordinator, exactly where a Coder agent would.
//!
//! The `fleet` task owns every agent: it watches the deployment and starts agents that
//! appear and stops those that go (a stopped workspace).

use std::collections::HashMap;
use std::sync::Arc;

use codervpn_dns::{coder_addr, tailscale_addr};
use codervpn_engine::connect::{self, DataPlaneSpec, DeviceSpec};
use codervpn_engine::device::userspace::UserspaceConfig;
use codervpn_engine::device::userspace::services::{AgentServer, AgentServices};
use codervpn_engine::net::derp::{self, ConnectOptions, NodePrivateKey};
use codervpn_engine::net::disco::{DiscoPrivateKey, DiscoPublicKey, PathConfig};
use codervpn_engine::net::netcheck::StunServer;
use codervpn_engine::net::relay;
use codervpn_engine::net::runner::{NetReport, WgCommand};
use codervpn_engine::net::wg::PeerConfig;
use codervpn_engine::session::join::netinfo::our_endpoints;
use codervpn_engine::session::node::{
    NodeInfo, decode_disco_key, decode_node_key, derp_latency_key, parse_endpoints, parse_prefixes,
};
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info_span, warn};

use crate::coord::{AgentEvent, Coordinator, PeerId};
use crate::model::{Deployment, Uuid};

/// The MTU agents use (the same as the tunnel's).
pub const AGENT_MTU: usize = 1280;
/// The agents' TCP echo port.
pub const ECHO_PORT: u16 = 7;
/// The agents' HTTP port.
pub const HTTP_PORT: u16 = 80;

/// How agents take part in direct paths.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AgentNet {
    /// Advertise no endpoints and keep every client on DERP.
    pub disable_direct: bool,
    /// Advertise loopback addresses too (clients on this host).
    pub loopback_endpoints: bool,
    /// STUN from the agent's socket against this server and advertise what it maps us to
    /// (an agent behind a NAT).
    pub stun: Option<std::net::SocketAddr>,
}

/// One running agent; dropping it stops it.
struct SimAgent {
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The page an agent's HTTP service serves.
pub fn agent_page(workspace: &str, agent: &str) -> String {
    format!(
        "<!doctype html><title>{agent}.{workspace}</title>\n<h1>Hello from agent {agent} of workspace {workspace}</h1>\n<p>served by the codervpn testbed over WireGuard on smoltcp</p>\n"
    )
}

/// Starts and stops agents as the deployment changes, until `deployment` closes or `stop`
/// fires; then unregisters and stops them all.
pub(crate) async fn fleet(
    mut deployment: watch::Receiver<Arc<Deployment>>,
    coordinator: Coordinator,
    derp_url: url::Url,
    tls: Option<Arc<rustls::ClientConfig>>,
    net: AgentNet,
    mut stop: oneshot::Receiver<()>,
) {
    let mut agents: HashMap<Uuid, SimAgent> = HashMap::new();
    loop {
        let current = deployment.borrow_and_update().clone();
        let mut wanted = HashMap::new();
        for w in &current.workspaces {
            for a in &w.agents {
                wanted.insert(a.id, (w.name.clone(), a.name.clone()));
            }
        }
        agents.retain(|id, _| {
            let keep = wanted.contains_key(id);
            if !keep {
                coordinator.unregister_agent(*id);
            }
            keep
        });
        for (id, (workspace, name)) in wanted {
            if agents.contains_key(&id) {
                continue;
            }
            match start_agent(id, &workspace, &name, &coordinator, &derp_url, &tls, net).await {
                Ok(agent) => {
                    agents.insert(id, agent);
                }
                Err(e) => warn!(%id, error = %e, "simulated agent failed to start"),
            }
        }
        let closed = tokio::select! {
            changed = deployment.changed() => changed.is_err(),
            _ = &mut stop => true,
        };
        if closed {
            for id in agents.keys() {
                coordinator.unregister_agent(*id);
            }
            return;
        }
    }
}

async fn start_agent(
    id: Uuid,
    workspace: &str,
    name: &str,
    coordinator: &Coordinator,
    derp_url: &url::Url,
    tls: &Option<Arc<rustls::ClientConfig>>,
    net: AgentNet,
) -> Result<SimAgent, String> {
    let key = NodePrivateKey::generate();
    let addresses: Vec<IpNet> = vec![
        IpNet::from(std::net::IpAddr::V6(coder_addr(id.0))),
        IpNet::from(std::net::IpAddr::V6(tailscale_addr(id.0))),
    ];
    let mut cfg = UserspaceConfig::new(addresses.clone());
    cfg.mtu = AGENT_MTU;
    let disco = DiscoPrivateKey::generate();
    let span = info_span!("sim_agent", agent = %name, workspace = %workspace);
    // Dropping stop_tx (an error below, or the agent dropped) stops the data plane.
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let plane = connect::start(
        DataPlaneSpec {
            relay: true,
            disco: Some(disco.clone()),
            loopback_endpoints: net.loopback_endpoints,
            paths: PathConfig {
                disable_direct: net.disable_direct,
                ..PathConfig::default()
            },
            ..DataPlaneSpec::new(key.to_bytes(), DeviceSpec::Userspace(cfg))
        },
        async {
            let _ = stop_rx.await;
        },
    )
    .instrument(span.clone())
    .await
    .map_err(|e| format!("the agent's data plane: {e}"))?;
    let stack = plane
        .stack
        .clone()
        .ok_or("the agent has no userspace stack")?;
    let inbound = plane
        .relay_inbound
        .clone()
        .ok_or("the agent has no relays")?;
    let cmd_tx = plane.commands.clone();
    let services = AgentServer::bind(
        &stack,
        AgentServices {
            echo_port: ECHO_PORT,
            http_port: HTTP_PORT,
            page: agent_page(workspace, name),
        },
    )
    .await
    .map_err(|e| format!("agent services: {e}"))?;
    let conn = derp::connect_with(
        derp_url,
        &[],
        NodePrivateKey::from_bytes(key.to_bytes()),
        ConnectOptions {
            preferred: true,
            tls: tls.clone(),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let _ = cmd_tx
        .send(WgCommand::AddRelay {
            region: crate::EMBEDDED_REGION_ID,
            handle: conn.handle.clone(),
            home: true,
        })
        .await;
    let node = NodeInfo {
        id: i64::from_le_bytes(id.0[8..].try_into().unwrap_or_default()) & i64::MAX,
        key: *key.public_key().as_bytes(),
        disco: *disco.public_key().as_bytes(),
        preferred_derp: crate::EMBEDDED_REGION_ID,
        derp_latency: vec![(derp_latency_key(crate::EMBEDDED_REGION_ID, false), 0.001)],
        addresses,
        endpoints: plane.endpoints.clone(),
    };
    let events = coordinator.register_agent(id, node.to_proto());
    if let Some(addr) = net.stun.filter(|_| !net.disable_direct) {
        let server = StunServer {
            region: crate::EMBEDDED_REGION_ID,
            addr,
        };
        let _ = cmd_tx.send(WgCommand::SetStunServers(vec![server])).await;
        tokio::spawn(
            publish_stun_endpoints(
                id,
                node,
                plane.report.clone(),
                cmd_tx.clone(),
                coordinator.clone(),
                net,
            )
            .instrument(span.clone()),
        );
    }
    tokio::spawn(
        relay::forward_events(crate::EMBEDDED_REGION_ID, conn.events, inbound)
            .instrument(span.clone()),
    );
    tokio::spawn(
        follow_coordinator(id, events, cmd_tx, coordinator.clone()).instrument(span.clone()),
    );
    let derp_handle = conn.handle;
    tokio::spawn(services.serve().instrument(span.clone()));
    tokio::spawn(
        async move {
            if let Ok(Err(e)) = plane.task.await {
                warn!(error = %e, "agent data plane failed");
            }
            derp_handle.close().await;
        }
        .instrument(span),
    );
    Ok(SimAgent {
        stop: Some(stop_tx),
    })
}

/// Follows the agent's STUN results: when its endpoints change (a NAT mapping appeared),
/// the data plane sends them in call-me-maybe and the coordinator tells the clients.
async fn publish_stun_endpoints(
    id: Uuid,
    mut node: NodeInfo,
    mut report: watch::Receiver<NetReport>,
    commands: mpsc::Sender<WgCommand>,
    coordinator: Coordinator,
    net: AgentNet,
) {
    while report.changed().await.is_ok() {
        let now = report.borrow_and_update().clone();
        let Some(endpoints) = our_endpoints(&now, net.loopback_endpoints) else {
            continue;
        };
        if endpoints == node.endpoints {
            continue;
        }
        debug!(?endpoints, "agent endpoints changed");
        node.endpoints = endpoints.clone();
        if commands
            .send(WgCommand::SetOwnEndpoints(endpoints))
            .await
            .is_err()
        {
            return;
        }
        coordinator.update_agent_node(id, node.to_proto());
    }
}

/// Programs the data plane from the coordinator's news about clients.
async fn follow_coordinator(
    id: Uuid,
    mut events: mpsc::UnboundedReceiver<AgentEvent>,
    commands: mpsc::Sender<WgCommand>,
    coordinator: Coordinator,
) {
    let mut keys: HashMap<PeerId, [u8; 32]> = HashMap::new();
    while let Some(ev) = events.recv().await {
        let cmd = match ev {
            AgentEvent::ClientNode { client, node } => {
                let key = match decode_node_key(&node.key) {
                    Ok(k) => k,
                    Err(e) => {
                        warn!(%client, error = %e, "client node refused");
                        continue;
                    }
                };
                let allowed_ips = match parse_prefixes(&node.allowed_ips) {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(%client, error = %e, "client node refused");
                        continue;
                    }
                };
                if let Some(old) = keys.insert(client, key).filter(|old| *old != key) {
                    let _ = commands.send(WgCommand::RemovePeer(old)).await;
                }
                let region = match i64::from(node.preferred_derp) {
                    0 => crate::EMBEDDED_REGION_ID,
                    r => r,
                };
                let cmd = WgCommand::UpsertRelayedPeer {
                    config: PeerConfig {
                        public_key: key,
                        preshared_key: None,
                        allowed_ips,
                        endpoint: None,
                        persistent_keepalive: None,
                    },
                    derp_region: region,
                };
                if commands.send(cmd).await.is_err() {
                    return;
                }
                match decode_disco_key(&node.disco) {
                    Ok(disco) => {
                        let cmd = WgCommand::SetPeerDisco {
                            key,
                            disco: DiscoPublicKey::from_bytes(disco),
                            endpoints: parse_endpoints(&node.endpoints),
                        };
                        if commands.send(cmd).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => debug!(%client, error = %e, "client node without a disco key"),
                }
                coordinator.agent_ready(id, client);
                continue;
            }
            AgentEvent::ClientGone { client } => match keys.remove(&client) {
                Some(k) => WgCommand::RemovePeer(k),
                None => continue,
            },
            AgentEvent::ClientLost { client } => {
                debug!(%client, "client lost; keeping its peer");
                continue;
            }
        };
        if commands.send(cmd).await.is_err() {
            return;
        }
    }
}
