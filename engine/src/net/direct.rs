//! Direct paths for the data plane (issue #8): one disco [`PeerPaths`] per peer that has a
//! disco key, fed the disco packets that arrive over UDP and through DERP; its transmits are
//! sealed here and handed back to the runner to send, and its path changes move the peer's
//! WireGuard endpoint between the direct address and DERP ([`Via`]).
//!
//! While a peer is on DERP, a disco ping crosses the relay every [`RELAY_PING_INTERVAL`]
//! so its latency through DERP can be reported (`LastPing` with `did_p2p = false`).
//!
//! Sans-IO: the runner passes the time in and sends what [`DirectPaths`] emits.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};

use tracing::{debug, debug_span, info, trace};

use super::derp::NodePublicKey;
use super::disco::{
    self, CallMeMaybe, DiscoPrivateKey, DiscoPublicKey, Message, Path, PathConfig, PeerPaths, Ping,
    Pong, Transmit, TxId, Via,
};

/// How often a peer on DERP is pinged through the relay (the status ping interval).
pub const RELAY_PING_INTERVAL: Duration = Duration::from_secs(5);
use super::path::DERP_MAGIC_IP;
use super::wg::{PeerSet, key_prefix};

/// A sealed disco packet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoSend {
    pub to: Via,
    pub packet: Vec<u8>,
}

/// Disco packets that were dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscoDropped {
    /// From a disco key no peer has (or, through DERP, not the key of the relaying peer).
    pub unknown_sender: u64,
    /// Did not open or decode: forged, corrupted, or sealed for another key.
    pub undecryptable: u64,
    /// A call-me-maybe over UDP (only accepted through DERP, as upstream does).
    pub call_me_maybe_over_udp: u64,
}

/// The direct-path state of every peer with a disco key.
#[derive(Debug)]
pub struct DirectPaths {
    key: DiscoPrivateKey,
    /// Our WireGuard node key, sent in pings.
    node_key: NodePublicKey,
    config: PathConfig,
    own_endpoints: Vec<SocketAddr>,
    peers: HashMap<[u8; 32], DiscoPeer>,
    by_disco: HashMap<DiscoPublicKey, [u8; 32]>,
    /// Pings in flight through DERP: whose, and when sent.
    relay_pings: HashMap<TxId, ([u8; 32], Instant)>,
    /// Pings asked for by a user (`codervpn ping`), in flight: whose, and when sent.
    user_pings: HashMap<TxId, ([u8; 32], Instant)>,
    /// Answers to user pings, for the runner to pass on.
    user_pongs: VecDeque<UserPong>,
    dropped: DiscoDropped,
}

/// The answer to a user's ping ([`DirectPaths::user_ping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserPong {
    pub tx_id: TxId,
    /// From sending the ping to its pong.
    pub latency: Duration,
    /// The way the pong came back: directly from this address, or through DERP.
    pub via: Via,
}

/// Why a user's ping was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PingRefused {
    #[error("the peer has no disco key yet (its node was not seen)")]
    NoDisco,
    #[error("the peer has neither a direct path nor a DERP route")]
    NoPath,
}

/// How long a user's ping waits for its pong before it is forgotten.
pub const USER_PING_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct DiscoPeer {
    disco: DiscoPublicKey,
    /// The path through DERP, once the peer has a relay route.
    relay: Option<Via>,
    /// The region our connection received the peer's last relayed disco packet on.
    relayed_from: Option<i64>,
    paths: PeerPaths,
    path: Path,
    /// Round-trip of the last answered ping through DERP.
    relay_latency: Option<Duration>,
    /// When the next ping through DERP is due (while on DERP).
    next_relay_ping: Instant,
}

impl DirectPaths {
    pub fn new(key: DiscoPrivateKey, node_key: [u8; 32], config: PathConfig) -> Self {
        Self {
            key,
            node_key: NodePublicKey::from_bytes(node_key),
            config,
            own_endpoints: Vec::new(),
            peers: HashMap::new(),
            by_disco: HashMap::new(),
            relay_pings: HashMap::new(),
            user_pings: HashMap::new(),
            user_pongs: VecDeque::new(),
            dropped: DiscoDropped::default(),
        }
    }

    /// Our endpoints, sent in every call-me-maybe from now on.
    pub fn set_own_endpoints(&mut self, endpoints: Vec<SocketAddr>) {
        self.own_endpoints = endpoints;
    }

    /// Sets (or updates) a peer's disco key, its node endpoints and whether it has a DERP
    /// route. A new disco key starts the peer's path state afresh (on DERP).
    #[allow(clippy::too_many_arguments)]
    pub fn set_peer(
        &mut self,
        now: Instant,
        key: [u8; 32],
        disco: DiscoPublicKey,
        endpoints: &[SocketAddr],
        relayed: bool,
        wg: &mut PeerSet,
        out: &mut impl FnMut(DiscoSend),
    ) {
        let fresh = self.peers.get(&key).is_none_or(|p| p.disco != disco);
        if fresh {
            if let Some(old) = self.peers.remove(&key) {
                self.by_disco.remove(&old.disco);
            }
            debug!(peer = %key_prefix(&key), %disco, "peer disco key set");
            self.by_disco.insert(disco, key);
            self.peers.insert(
                key,
                DiscoPeer {
                    disco,
                    relay: None,
                    relayed_from: None,
                    paths: PeerPaths::new(self.config.clone()),
                    path: Path::Derp,
                    relay_latency: None,
                    next_relay_ping: now,
                },
            );
        }
        let _span = debug_span!("disco", peer = %key_prefix(&key)).entered();
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if relayed {
            peer.relay = Some(Via::Derp(NodePublicKey::from_bytes(key)));
        }
        // Pin the endpoint to the current path, so roaming does not move it behind our back.
        match (peer.path, peer.relay) {
            (Path::Direct { addr, .. }, _) => {
                wg.set_endpoint(&key, Via::Udp(addr));
            }
            (Path::Derp, Some(via)) => {
                wg.set_endpoint(&key, via);
            }
            (Path::Derp, None) => {}
        }
        peer.paths.set_node_endpoints(now, endpoints);
        self.drain(&key, wg, out);
    }

    /// The network changed (wake, new interface): every peer trusts no direct path until it
    /// answers again, and is pinged now.
    pub fn network_changed(
        &mut self,
        now: Instant,
        wg: &mut PeerSet,
        out: &mut impl FnMut(DiscoSend),
    ) {
        let keys: Vec<[u8; 32]> = self.peers.keys().copied().collect();
        for key in keys {
            let _span = debug_span!("disco", peer = %key_prefix(&key)).entered();
            if let Some(p) = self.peers.get_mut(&key) {
                p.paths.network_changed(now);
            }
            self.drain(&key, wg, out);
        }
    }

    /// Forgets a peer.
    pub fn remove_peer(&mut self, key: &[u8; 32]) {
        if let Some(old) = self.peers.remove(key) {
            self.by_disco.remove(&old.disco);
        }
        self.relay_pings.retain(|_, (k, _)| k != key);
        self.user_pings.retain(|_, (k, _)| k != key);
    }

    /// Sends a disco ping to `key`'s peer the way its WireGuard packets go now (its direct
    /// address, else through DERP); the pong comes out of [`Self::poll_user_pong`] with the
    /// returned transaction id. Unlike path discovery pings, its pong moves no path.
    pub fn user_ping(
        &mut self,
        now: Instant,
        key: [u8; 32],
        out: &mut impl FnMut(DiscoSend),
    ) -> Result<TxId, PingRefused> {
        let peer = self.peers.get(&key).ok_or(PingRefused::NoDisco)?;
        let to = match (peer.path, peer.relay) {
            (Path::Direct { addr, .. }, _) => Via::Udp(addr),
            (Path::Derp, Some(via)) => via,
            (Path::Derp, None) => return Err(PingRefused::NoPath),
        };
        let (tx_id, packet) = sealed_ping(&self.key, self.node_key, &peer.disco);
        self.user_pings.insert(tx_id, (key, now));
        trace!(peer = %key_prefix(&key), ?to, "user ping");
        out(DiscoSend { to, packet });
        Ok(tx_id)
    }

    /// The next answer to a user's ping.
    pub fn poll_user_pong(&mut self) -> Option<UserPong> {
        self.user_pongs.pop_front()
    }

    /// A disco packet from the UDP socket.
    pub fn handle_udp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &[u8],
        wg: &mut PeerSet,
        out: &mut impl FnMut(DiscoSend),
    ) {
        let Some(key) = disco::sender(packet).and_then(|d| self.by_disco.get(&d).copied()) else {
            self.dropped.unknown_sender += 1;
            trace!(%from, "disco packet from an unknown key dropped");
            return;
        };
        self.deliver(now, key, Via::Udp(from), packet, wg, out);
    }

    /// A disco packet relayed by DERP from the node `from`, received on our connection to
    /// `region`.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_relayed(
        &mut self,
        now: Instant,
        region: i64,
        from: &NodePublicKey,
        packet: &[u8],
        wg: &mut PeerSet,
        out: &mut impl FnMut(DiscoSend),
    ) {
        let key = *from.as_bytes();
        let sender = disco::sender(packet);
        let Some(peer) = self.peers.get_mut(&key).filter(|p| Some(p.disco) == sender) else {
            self.dropped.unknown_sender += 1;
            trace!(from = %from.short(), "relayed disco packet from an unknown key dropped");
            return;
        };
        let Some(via) = peer.relay else {
            self.dropped.unknown_sender += 1;
            return;
        };
        peer.relayed_from = Some(region);
        self.deliver(now, key, via, packet, wg, out);
    }

    /// Opens a disco packet from `key`'s peer, which arrived over `via`, and feeds it to
    /// the peer's path state. A CallMeMaybe is only believed through DERP (upstream).
    fn deliver(
        &mut self,
        now: Instant,
        key: [u8; 32],
        via: Via,
        packet: &[u8],
        wg: &mut PeerSet,
        out: &mut impl FnMut(DiscoSend),
    ) {
        let _span = debug_span!("disco", peer = %key_prefix(&key)).entered();
        let Some(msg) = self.open(packet) else { return };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        match (msg, via) {
            (Message::Ping(ping), _) => peer.paths.handle_ping(now, via, &ping),
            (Message::Pong(pong), _) => {
                if let Some(rtt) = matches!(via, Via::Derp(_))
                    .then(|| take_pong(&mut self.relay_pings, &pong.tx_id, key, now))
                    .flatten()
                {
                    trace!(?rtt, "pong through DERP");
                    peer.relay_latency = Some(rtt);
                } else if let Some(latency) = take_pong(&mut self.user_pings, &pong.tx_id, key, now)
                {
                    self.user_pongs.push_back(UserPong {
                        tx_id: pong.tx_id,
                        latency,
                        via,
                    });
                    return;
                } else {
                    peer.paths.handle_pong(now, via, &pong);
                }
            }
            (Message::CallMeMaybe(cmm), Via::Derp(_)) => {
                peer.paths.handle_call_me_maybe(now, &cmm.endpoints)
            }
            (Message::CallMeMaybe(_), Via::Udp(_)) => {
                self.dropped.call_me_maybe_over_udp += 1;
                return;
            }
        }
        self.drain(&key, wg, out);
    }

    /// Runs every peer's timers that fell due.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        wg: &mut PeerSet,
        out: &mut impl FnMut(DiscoSend),
    ) {
        let due: Vec<[u8; 32]> = self
            .peers
            .iter()
            .filter(|(_, p)| p.paths.poll_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let _span = debug_span!("disco", peer = %key_prefix(&key)).entered();
            if let Some(p) = self.peers.get_mut(&key) {
                p.paths.handle_timeout(now);
            }
            self.drain(&key, wg, out);
        }
        self.relay_pings
            .retain(|_, (_, sent)| now.saturating_duration_since(*sent) < RELAY_PING_INTERVAL);
        self.user_pings
            .retain(|_, (_, sent)| now.saturating_duration_since(*sent) < USER_PING_TIMEOUT);
        for (key, peer) in &mut self.peers {
            let Some(via) = peer.relay.filter(|_| peer.path == Path::Derp) else {
                continue;
            };
            if peer.next_relay_ping > now {
                continue;
            }
            peer.next_relay_ping = now + RELAY_PING_INTERVAL;
            let (tx_id, packet) = sealed_ping(&self.key, self.node_key, &peer.disco);
            self.relay_pings.insert(tx_id, (*key, now));
            out(DiscoSend { to: via, packet });
        }
    }

    /// The round-trip of the last answered ping through DERP to a peer.
    pub fn relay_latency(&self, key: &[u8; 32]) -> Option<Duration> {
        self.peers.get(key).and_then(|p| p.relay_latency)
    }

    /// The current path of a peer with a disco key.
    pub fn path(&self, key: &[u8; 32]) -> Option<Path> {
        self.peers.get(key).map(|p| p.path)
    }

    pub fn dropped(&self) -> DiscoDropped {
        self.dropped
    }

    fn open(&mut self, packet: &[u8]) -> Option<Message> {
        match disco::open(&self.key, packet) {
            Ok((_, msg)) => Some(msg),
            Err(e) => {
                self.dropped.undecryptable += 1;
                trace!(error = %e, "disco packet dropped");
                None
            }
        }
    }

    /// Seals and emits the peer's transmits and applies its path change.
    fn drain(&mut self, key: &[u8; 32], wg: &mut PeerSet, out: &mut impl FnMut(DiscoSend)) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        while let Some(t) = peer.paths.poll_transmit() {
            let (msg, to) = match t {
                Transmit::Ping { to, tx_id } => (
                    Message::Ping(Ping {
                        tx_id,
                        node_key: Some(self.node_key),
                    }),
                    Via::Udp(to),
                ),
                Transmit::Pong { to, tx_id, src } => {
                    let src = src.unwrap_or_else(|| {
                        let region = peer.relayed_from.unwrap_or_default();
                        SocketAddr::new(
                            IpAddr::V4(DERP_MAGIC_IP),
                            u16::try_from(region).unwrap_or(0),
                        )
                    });
                    (Message::Pong(Pong { tx_id, src }), to)
                }
                Transmit::CallMeMaybe => {
                    let Some(via) = peer.relay else { continue };
                    let cmm = CallMeMaybe {
                        endpoints: self.own_endpoints.clone(),
                    };
                    (Message::CallMeMaybe(cmm), via)
                }
            };
            let packet = disco::seal(&self.key, &peer.disco, &msg);
            out(DiscoSend { to, packet });
        }
        let Some(path) = peer.paths.poll_path_change() else {
            return;
        };
        let before = std::mem::replace(&mut peer.path, path);
        if before.same_route(path) {
            trace!(peer = %key_prefix(key), ?path, "direct path latency");
            return;
        }
        match path {
            Path::Direct { addr, latency } => {
                info!(peer = %key_prefix(key), %addr, ?latency, "path to {} is direct via {addr}", key_prefix(key));
                wg.set_endpoint(key, Via::Udp(addr));
            }
            Path::Derp => {
                info!(peer = %key_prefix(key), "path to {} is DERP", key_prefix(key));
                if let Some(via) = peer.relay {
                    wg.set_endpoint(key, via);
                }
            }
        }
    }
}

/// A disco ping with a fresh transaction id, sealed from `key` to `to`.
fn sealed_ping(
    key: &DiscoPrivateKey,
    node_key: NodePublicKey,
    to: &DiscoPublicKey,
) -> (TxId, Vec<u8>) {
    let mut tx_id = TxId::default();
    OsRng.fill_bytes(&mut tx_id);
    let ping = Message::Ping(Ping {
        tx_id,
        node_key: Some(node_key),
    });
    (tx_id, disco::seal(key, to, &ping))
}

/// The round trip of the ping `tx_id` in `pings` when it was sent to `key`'s peer (and
/// forgets it); `None` for a pong to someone else's or no ping.
fn take_pong(
    pings: &mut HashMap<TxId, ([u8; 32], Instant)>,
    tx_id: &TxId,
    key: [u8; 32],
    now: Instant,
) -> Option<Duration> {
    if pings.get(tx_id).is_none_or(|(k, _)| *k != key) {
        return None;
    }
    let (_, sent) = pings.remove(tx_id)?;
    Some(now.saturating_duration_since(sent))
}

#[cfg(test)]
#[path = "direct_tests.rs"]
mod tests;
