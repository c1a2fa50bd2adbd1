//! DERP as a WireGuard path (tailnet.md §11). The peer set only knows socket addresses, so
//! every peer reached through a relay gets a *magic* endpoint, `127.3.3.40:<slot>` (the
//! address Tailscale's magicsock uses for DERP), and the runner hands datagrams for a magic
//! endpoint to the DERP connection of the peer's region instead of the UDP socket. Packets
//! the relays deliver come back in through one channel and enter the peer set as if they
//! had arrived from the sender's magic endpoint. For peers with a disco key the endpoint is
//! pinned: disco ([`super::direct`]) moves it between a direct address and the magic one.
//!
//! Sans-IO apart from the non-blocking queue sends: the DERP connections themselves are
//! tokio tasks owned by whoever created them (the session).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, trace};

use super::derp::{DerpConnStats, DerpHandle, NodePublicKey};

/// The address every relayed endpoint lives on; the port is the peer's slot.
pub const MAGIC_IP: Ipv4Addr = Ipv4Addr::new(127, 3, 3, 40);

/// A packet a relay delivered.
#[derive(Debug)]
pub struct RelayIn {
    pub region: i64,
    pub from: NodePublicKey,
    pub data: Bytes,
}

/// Relayed packets that could not be sent, by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayCounters {
    /// To a magic endpoint that names no slot (the peer was removed meanwhile).
    pub no_route: u64,
    /// No connection to the peer's region nor to the home region.
    pub no_region: u64,
    /// The connection's queue was full (dropped; WireGuard retransmits).
    pub queue_full: u64,
    /// From a node key no peer is routed for.
    pub unknown_sender: u64,
}

#[derive(Debug, Clone, Copy)]
struct Route {
    key: NodePublicKey,
    region: i64,
}

/// The relays the data plane can send through, and which peer goes through which.
#[derive(Debug)]
pub struct Relay {
    conns: HashMap<i64, DerpHandle>,
    home: Option<i64>,
    /// Index = slot = magic port; slot 0 is never used.
    slots: Vec<Option<Route>>,
    by_key: HashMap<NodePublicKey, u16>,
    inbound: mpsc::Receiver<RelayIn>,
    counters: RelayCounters,
}

/// True for an endpoint that stands for a DERP path.
pub fn is_magic(addr: &SocketAddr) -> bool {
    addr.ip() == IpAddr::V4(MAGIC_IP)
}

impl Relay {
    /// A relay set with no connections yet; `inbound` receives what every connection
    /// delivers (see [`forward_events`]).
    pub fn new(inbound: mpsc::Receiver<RelayIn>) -> Self {
        Self {
            conns: HashMap::new(),
            home: None,
            slots: vec![None],
            by_key: HashMap::new(),
            inbound,
            counters: RelayCounters::default(),
        }
    }

    /// Adds (or replaces) the connection to `region`; `home` marks our preferred region,
    /// used for peers whose region we have no connection to.
    pub fn add_region(&mut self, region: i64, handle: DerpHandle, home: bool) {
        self.conns.insert(region, handle);
        if home {
            self.set_home(region);
        } else if self.home.is_none() {
            self.home = Some(region);
        }
    }

    /// Makes `region` the home region; its server is told it is preferred and the previous
    /// home's that it no longer is (when connected).
    pub fn set_home(&mut self, region: i64) {
        if self.home == Some(region) {
            return;
        }
        let old = self.home.replace(region);
        for (r, preferred) in [(old, false), (Some(region), true)] {
            if let Some(handle) = r.and_then(|r| self.conns.get(&r)).cloned() {
                tokio::spawn(async move {
                    let _ = handle.set_preferred(preferred).await;
                });
            }
        }
    }

    /// The home region, once one is connected or chosen.
    pub fn home(&self) -> Option<i64> {
        self.home
    }

    /// Forgets the connection to `region`.
    pub fn remove_region(&mut self, region: i64) -> Option<DerpHandle> {
        if self.home == Some(region) {
            self.home = None;
        }
        self.conns.remove(&region)
    }

    /// Routes `key` through `region` and returns its magic endpoint; `None` once 65 535
    /// peers hold a slot.
    pub fn route(&mut self, key: NodePublicKey, region: i64) -> Option<SocketAddr> {
        let slot = match self.by_key.get(&key) {
            Some(&slot) => slot,
            None => {
                let slot = match self.slots.iter().skip(1).position(Option::is_none) {
                    Some(i) => i + 1,
                    None => {
                        self.slots.push(None);
                        self.slots.len() - 1
                    }
                };
                let slot = u16::try_from(slot).ok()?;
                self.by_key.insert(key, slot);
                slot
            }
        };
        self.slots[usize::from(slot)] = Some(Route { key, region });
        debug!(peer = %key.short(), region, slot, "relay route");
        Some(SocketAddr::new(IpAddr::V4(MAGIC_IP), slot))
    }

    /// Stops routing `key`; its slot is reused later.
    pub fn unroute(&mut self, key: &NodePublicKey) {
        if let Some(slot) = self.by_key.remove(key) {
            self.slots[usize::from(slot)] = None;
        }
    }

    /// The magic endpoint of a routed peer (not counted when there is none).
    pub fn endpoint(&self, key: &NodePublicKey) -> Option<SocketAddr> {
        let slot = self.by_key.get(key)?;
        Some(SocketAddr::new(IpAddr::V4(MAGIC_IP), *slot))
    }

    /// The magic endpoint a packet from `from` is attributed to.
    pub fn source(&mut self, from: &NodePublicKey) -> Option<SocketAddr> {
        match self.by_key.get(from) {
            Some(&slot) => Some(SocketAddr::new(IpAddr::V4(MAGIC_IP), slot)),
            None => {
                self.counters.unknown_sender += 1;
                trace!(from = %from.short(), "relayed packet from a node we route nothing for");
                None
            }
        }
    }

    /// Queues `data` for the peer behind the magic endpoint `to`. Never waits.
    pub fn send(&mut self, to: SocketAddr, data: &[u8]) {
        let route = self
            .slots
            .get(usize::from(to.port()))
            .copied()
            .flatten()
            .filter(|_| is_magic(&to));
        let Some(route) = route else {
            self.counters.no_route += 1;
            return;
        };
        let conn = self
            .conns
            .get(&route.region)
            .or_else(|| self.home.and_then(|h| self.conns.get(&h)));
        let Some(conn) = conn else {
            self.counters.no_region += 1;
            return;
        };
        match conn.try_send(route.key, Bytes::copy_from_slice(data)) {
            Ok(true) => {}
            Ok(false) | Err(_) => self.counters.queue_full += 1,
        }
    }

    /// The region whose connection carries packets to the magic endpoint `magic` (the
    /// peer's own when connected, else the home region).
    pub fn region_via(&self, magic: SocketAddr) -> Option<i64> {
        let route = self
            .slots
            .get(usize::from(magic.port()))
            .copied()
            .flatten()?;
        if self.conns.contains_key(&route.region) {
            Some(route.region)
        } else {
            self.home
        }
    }

    /// Asks every connection to prove it is alive within `timeout` (after a wake); a silent
    /// one is dropped and dialled again at once ([`DerpHandle::probe`]).
    pub fn probe_all(&self, timeout: std::time::Duration) {
        for (region, handle) in &self.conns {
            if handle.probe(timeout).is_err() {
                debug!(region, "DERP connection gone; nothing to probe");
            }
        }
    }

    /// Every connected region with its connection's counters, by region id.
    pub fn connections(&self) -> Vec<(i64, DerpConnStats)> {
        let mut v: Vec<_> = self.conns.iter().map(|(r, h)| (*r, h.stats())).collect();
        v.sort_by_key(|(r, _)| *r);
        v
    }

    /// The next delivered packet.
    pub async fn recv(&mut self) -> Option<RelayIn> {
        self.inbound.recv().await
    }

    /// A delivered packet, if one is waiting.
    pub fn try_recv(&mut self) -> Option<RelayIn> {
        self.inbound.try_recv().ok()
    }

    pub fn counters(&self) -> &RelayCounters {
        &self.counters
    }
}

/// Moves the packets one DERP connection delivers into the relay's inbound channel (and
/// logs its other events) until either side is gone.
pub async fn forward_events(
    region: i64,
    mut events: mpsc::Receiver<super::derp::DerpEvent>,
    inbound: mpsc::Sender<RelayIn>,
) {
    use super::derp::{ClientEvent, DerpEvent};
    while let Some(ev) = events.recv().await {
        match ev {
            DerpEvent::Relay(ClientEvent::Packet { from, data }) => {
                if inbound.send(RelayIn { region, from, data }).await.is_err() {
                    return;
                }
            }
            DerpEvent::Relay(other) => trace!(region, event = ?other, "DERP event"),
            DerpEvent::Disconnected { error, retry_in } => {
                debug!(region, %error, ?retry_in, "DERP connection lost; reconnecting");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NodePublicKey {
        NodePublicKey::from_bytes([b; 32])
    }

    #[test]
    fn routed_peers_get_distinct_magic_endpoints_and_slots_are_reused() {
        let (_tx, rx) = mpsc::channel(1);
        let mut r = Relay::new(rx);
        let a = r.route(key(1), 999).unwrap();
        let b = r.route(key(2), 999).unwrap();
        assert!(is_magic(&a) && is_magic(&b));
        assert_ne!(a, b);
        assert_eq!(r.route(key(1), 1), Some(a), "re-routing keeps the slot");
        assert_eq!(r.source(&key(2)), Some(b));
        r.unroute(&key(1));
        assert_eq!(r.source(&key(1)), None);
        assert_eq!(r.counters().unknown_sender, 1);
        assert_eq!(r.route(key(3), 999), Some(a), "freed slot reused");
    }

    #[test]
    fn sends_without_a_route_or_region_are_counted_not_panics() {
        let (_tx, rx) = mpsc::channel(1);
        let mut r = Relay::new(rx);
        r.send("127.3.3.40:9".parse().unwrap(), b"x");
        r.send("10.0.0.1:1".parse().unwrap(), b"x");
        assert_eq!(r.counters().no_route, 2);
        let to = r.route(key(1), 999).unwrap();
        r.send(to, b"x");
        assert_eq!(r.counters().no_region, 1);
    }
}
