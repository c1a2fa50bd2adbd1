//! The testbed's coordinator: relays nodes between clients (tunnels dialling
//! `Coordinate`) and the simulated agents, with upstream's peer-update kinds
//! (tailnet.md §8): a client learns an agent's node (`NODE`) when it adds a tunnel to it
//! and the agent is up, `READY_FOR_HANDSHAKE` once the agent programmed the client's
//! node, `DISCONNECTED` when the agent goes away. Agents hear of a client's node, of its
//! removal (`remove_tunnel`, `disconnect`) and of its loss (stream dropped without
//! `disconnect`: they keep the peer, as upstream's `LOST` asks).
//!
//! One mutex guards the whole state; every change is a short, non-blocking section that
//! only queues messages on unbounded channels.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use codervpn_proto::tailnet::coordinate_response::PeerUpdate;
use codervpn_proto::tailnet::coordinate_response::peer_update::Kind;
use codervpn_proto::tailnet::{CoordinateRequest, CoordinateResponse, Node};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::model::Uuid;

/// A client's identity as the coordinator knows it: stable across reconnects made with a
/// resume token.
pub type PeerId = Uuid;

/// What an agent hears about clients.
#[derive(Debug, Clone)]
pub enum AgentEvent {
    /// A client that has a tunnel to this agent published (or changed) its node.
    ClientNode { client: PeerId, node: Box<Node> },
    /// The client removed its tunnel or disconnected: drop its peer.
    ClientGone { client: PeerId },
    /// The client's stream broke without `disconnect`: keep its peer (upstream `LOST`).
    ClientLost { client: PeerId },
}

struct ClientEntry {
    node: Option<Node>,
    tunnels: HashSet<Uuid>,
    /// The live stream's sender and its generation (a reconnect replaces both).
    tx: Option<(u64, mpsc::UnboundedSender<CoordinateResponse>)>,
}

struct AgentEntry {
    node: Node,
    tx: mpsc::UnboundedSender<AgentEvent>,
}

#[derive(Default)]
struct State {
    clients: HashMap<PeerId, ClientEntry>,
    agents: HashMap<Uuid, AgentEntry>,
    generation: u64,
    /// Relayed peer updates so far (for tests and the summary).
    peer_updates_sent: u64,
}

/// The coordinator. Cheap to clone.
#[derive(Clone, Default)]
pub struct Coordinator {
    state: Arc<Mutex<State>>,
}

fn update(id: Uuid, kind: Kind, node: Option<Node>, reason: &str) -> CoordinateResponse {
    CoordinateResponse {
        peer_updates: vec![PeerUpdate {
            id: id.0.to_vec(),
            node,
            kind: kind as i32,
            reason: reason.to_owned(),
        }],
        error: String::new(),
    }
}

impl State {
    /// The clients that have a tunnel to agent `id`.
    fn clients_with_tunnel(&self, id: Uuid) -> Vec<PeerId> {
        let with = self.clients.iter().filter(|(_, c)| c.tunnels.contains(&id));
        with.map(|(k, _)| *k).collect()
    }

    fn send_to_client(&mut self, client: PeerId, msg: CoordinateResponse) {
        if let Some((_, tx)) = self.clients.get(&client).and_then(|c| c.tx.as_ref())
            && tx.send(msg).is_ok()
        {
            self.peer_updates_sent += 1;
        }
    }
}

impl Coordinator {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An agent came up with `node`: clients with a tunnel to it learn the node, and it
    /// learns theirs. Returns the agent's event stream.
    pub fn register_agent(&self, id: Uuid, node: Node) -> mpsc::UnboundedReceiver<AgentEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.lock();
        for client in st.clients_with_tunnel(id) {
            st.send_to_client(client, update(id, Kind::Node, Some(node.clone()), ""));
            if let Some(n) = st.clients.get(&client).and_then(|c| c.node.clone()) {
                let _ = tx.send(AgentEvent::ClientNode {
                    client,
                    node: Box::new(n),
                });
            }
        }
        st.agents.insert(id, AgentEntry { node, tx });
        rx
    }

    /// The agent went away (its workspace stopped): clients see `DISCONNECTED`.
    pub fn unregister_agent(&self, id: Uuid) {
        let mut st = self.lock();
        if st.agents.remove(&id).is_none() {
            return;
        }
        for client in st.clients_with_tunnel(id) {
            st.send_to_client(
                client,
                update(id, Kind::Disconnected, None, "agent disconnected"),
            );
        }
    }

    /// The agent programmed `client`'s node: the client may start its handshake.
    pub fn agent_ready(&self, agent: Uuid, client: PeerId) {
        let mut st = self.lock();
        let has_tunnel = st
            .clients
            .get(&client)
            .is_some_and(|c| c.tunnels.contains(&agent));
        if has_tunnel {
            st.send_to_client(client, update(agent, Kind::ReadyForHandshake, None, ""));
        }
    }

    /// A client's `Coordinate` stream opened; returns its generation and the receiver of
    /// what to send it. A reconnect under the same id keeps its node and tunnels (the
    /// client re-sends them anyway).
    pub fn connect_client(
        &self,
        client: PeerId,
    ) -> (u64, mpsc::UnboundedReceiver<CoordinateResponse>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.lock();
        st.generation += 1;
        let generation = st.generation;
        let entry = st.clients.entry(client).or_insert_with(|| ClientEntry {
            node: None,
            tunnels: HashSet::new(),
            tx: None,
        });
        entry.tx = Some((generation, tx));
        (generation, rx)
    }

    /// Applies one request from `client`. Returns false after `disconnect`.
    pub fn handle(&self, client: PeerId, req: CoordinateRequest) -> bool {
        let mut st = self.lock();
        if let Some(node) = req.update_self.and_then(|u| u.node) {
            // What the client advertises, for tests that check its STUN-learned endpoint
            // and the regions it measured (`<id>-v4` / `<id>-v6` keys).
            let measured: std::collections::BTreeSet<&str> =
                node.derp_latency.keys().map(String::as_str).collect();
            info!(%client, latency_keys = ?measured, endpoints = ?node.endpoints, "client node");
            let tunnels: Vec<Uuid> = match st.clients.get_mut(&client) {
                Some(c) => {
                    c.node = Some(node.clone());
                    c.tunnels.iter().copied().collect()
                }
                None => Vec::new(),
            };
            for agent in tunnels {
                if let Some(a) = st.agents.get(&agent) {
                    let _ = a.tx.send(AgentEvent::ClientNode {
                        client,
                        node: Box::new(node.clone()),
                    });
                }
            }
        }
        if let Some(t) = req.add_tunnel.and_then(|t| uuid(&t.id)) {
            let node = st.clients.get_mut(&client).and_then(|c| {
                c.tunnels.insert(t);
                c.node.clone()
            });
            let agent_node = st.agents.get(&t).map(|a| {
                if let Some(n) = node {
                    let _ = a.tx.send(AgentEvent::ClientNode {
                        client,
                        node: Box::new(n),
                    });
                }
                a.node.clone()
            });
            if let Some(n) = agent_node {
                st.send_to_client(client, update(t, Kind::Node, Some(n), ""));
            }
        }
        if let Some(t) = req.remove_tunnel.and_then(|t| uuid(&t.id)) {
            if let Some(c) = st.clients.get_mut(&client) {
                c.tunnels.remove(&t);
            }
            if let Some(a) = st.agents.get(&t) {
                let _ = a.tx.send(AgentEvent::ClientGone { client });
            }
        }
        if req.disconnect.is_some() {
            if let Some(c) = st.clients.remove(&client) {
                for t in c.tunnels {
                    if let Some(a) = st.agents.get(&t) {
                        let _ = a.tx.send(AgentEvent::ClientGone { client });
                    }
                }
            }
            debug!(%client, "coordinate: client disconnected");
            return false;
        }
        true
    }

    /// The stream of generation `generation` ended without `disconnect`: agents keep the
    /// client's peer (LOST) unless a newer stream already took over.
    pub fn client_lost(&self, client: PeerId, generation: u64) {
        let mut st = self.lock();
        let Some(c) = st.clients.get_mut(&client) else {
            return;
        };
        if c.tx.as_ref().is_none_or(|(g, _)| *g != generation) {
            return;
        }
        c.tx = None;
        let tunnels: Vec<Uuid> = c.tunnels.iter().copied().collect();
        for t in tunnels {
            if let Some(a) = st.agents.get(&t) {
                let _ = a.tx.send(AgentEvent::ClientLost { client });
            }
        }
    }

    /// A running agent's node changed (new endpoints from STUN): clients with a tunnel to
    /// it get the new node, as a Coder agent's `update_self` would send it.
    pub fn update_agent_node(&self, id: Uuid, node: Node) {
        let mut st = self.lock();
        let Some(agent) = st.agents.get_mut(&id) else {
            return;
        };
        agent.node = node.clone();
        for client in st.clients_with_tunnel(id) {
            st.send_to_client(client, update(id, Kind::Node, Some(node.clone()), ""));
        }
    }

    /// The nodes clients last published (`update_self`), one per client that sent one.
    pub fn client_nodes(&self) -> Vec<Node> {
        let st = self.lock();
        st.clients.values().filter_map(|c| c.node.clone()).collect()
    }

    /// Peer updates relayed to clients so far.
    pub fn peer_updates_sent(&self) -> u64 {
        self.lock().peer_updates_sent
    }

    /// Agents registered right now.
    pub fn agents(&self) -> usize {
        self.lock().agents.len()
    }
}

fn uuid(b: &[u8]) -> Option<Uuid> {
    b.try_into().ok().map(Uuid)
}

#[cfg(test)]
mod tests {
    use codervpn_proto::tailnet::coordinate_request::{Tunnel, UpdateSelf};

    use super::*;

    fn node(id: i64) -> Node {
        Node {
            id,
            preferred_derp: 999,
            ..Default::default()
        }
    }

    fn add_tunnel(agent: Uuid) -> CoordinateRequest {
        CoordinateRequest {
            add_tunnel: Some(Tunnel {
                id: agent.0.to_vec(),
            }),
            ..Default::default()
        }
    }

    fn update_self(n: Node) -> CoordinateRequest {
        CoordinateRequest {
            update_self: Some(UpdateSelf { node: Some(n) }),
            ..Default::default()
        }
    }

    fn kinds(rx: &mut mpsc::UnboundedReceiver<CoordinateResponse>) -> Vec<i32> {
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.extend(r.peer_updates.iter().map(|u| u.kind));
        }
        out
    }

    #[test]
    fn client_learns_agent_node_then_ready_then_disconnected() {
        let c = Coordinator::default();
        let agent = Uuid::random();
        let client = Uuid::random();
        let mut agent_rx = c.register_agent(agent, node(1));
        let (_, mut rx) = c.connect_client(client);
        assert!(c.handle(client, update_self(node(2))));
        assert!(c.handle(client, add_tunnel(agent)));
        assert_eq!(kinds(&mut rx), [Kind::Node as i32]);
        match agent_rx.try_recv().unwrap() {
            AgentEvent::ClientNode { client: who, node } => {
                assert_eq!(who, client);
                assert_eq!(node.id, 2);
            }
            other => panic!("{other:?}"),
        }
        c.agent_ready(agent, client);
        c.unregister_agent(agent);
        assert_eq!(
            kinds(&mut rx),
            [Kind::ReadyForHandshake as i32, Kind::Disconnected as i32]
        );
    }

    #[test]
    fn agent_that_comes_up_later_is_announced_to_clients_with_a_tunnel() {
        let c = Coordinator::default();
        let agent = Uuid::random();
        let client = Uuid::random();
        let (_, mut rx) = c.connect_client(client);
        c.handle(client, update_self(node(2)));
        c.handle(client, add_tunnel(agent));
        assert!(kinds(&mut rx).is_empty());
        let mut agent_rx = c.register_agent(agent, node(1));
        assert_eq!(kinds(&mut rx), [Kind::Node as i32]);
        assert!(matches!(
            agent_rx.try_recv(),
            Ok(AgentEvent::ClientNode { .. })
        ));
    }

    #[test]
    fn dropped_stream_is_lost_but_disconnect_is_gone() {
        let c = Coordinator::default();
        let agent = Uuid::random();
        let client = Uuid::random();
        let mut agent_rx = c.register_agent(agent, node(1));
        let (g1, _rx) = c.connect_client(client);
        c.handle(client, update_self(node(2)));
        c.handle(client, add_tunnel(agent));
        let _ = agent_rx.try_recv();
        c.client_lost(client, g1);
        assert!(matches!(
            agent_rx.try_recv(),
            Ok(AgentEvent::ClientLost { .. })
        ));
        let (g2, _rx2) = c.connect_client(client);
        c.client_lost(client, g1); // stale generation: ignored
        assert!(agent_rx.try_recv().is_err());
        let _ = g2;
        assert!(!c.handle(
            client,
            CoordinateRequest {
                disconnect: Some(Default::default()),
                ..Default::default()
            }
        ));
        assert!(matches!(
            agent_rx.try_recv(),
            Ok(AgentEvent::ClientGone { .. })
        ));
    }

    #[test]
    fn an_agent_node_update_reaches_clients_with_a_tunnel_only() {
        let c = Coordinator::default();
        let agent = Uuid([1; 16]);
        let _events = c.register_agent(agent, node(10));
        let (with, other) = (Uuid([7; 16]), Uuid([8; 16]));
        let (_, mut rx_with) = c.connect_client(with);
        let (_, mut rx_other) = c.connect_client(other);
        c.handle(with, add_tunnel(agent));
        kinds(&mut rx_with);
        let mut newer = node(10);
        newer.endpoints = vec!["198.51.100.7:4242".into()];
        c.update_agent_node(agent, newer);
        let got = rx_with.try_recv().unwrap();
        assert_eq!(got.peer_updates[0].kind, Kind::Node as i32);
        let sent = got.peer_updates[0].node.as_ref().unwrap();
        assert_eq!(sent.endpoints, vec!["198.51.100.7:4242".to_owned()]);
        assert!(kinds(&mut rx_other).is_empty());
        c.update_agent_node(Uuid([2; 16]), node(11));
        assert!(
            kinds(&mut rx_with).is_empty(),
            "unknown agent: nothing sent"
        );
    }
}
