//! DERP as a WireGuard path (tailnet.md §11): which peer is reached through which region's
//! connection. The peer set and disco address a relayed peer as [`Via::Derp`] with its
//! node key; this table picks the connection (the peer's own region when we have one,
//! else our home region) and queues the packet on it. Packets the relays deliver come back
//! in through one channel; the runner hands them to the path layer's demux as coming
//! [`Via::Derp`] from their sender.
//!
//! Sans-IO apart from the non-blocking queue sends: the DERP connections themselves are
//! tokio tasks owned by whoever created them (the session).

use std::collections::HashMap;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, trace};

use super::derp::{DerpConnStats, DerpHandle, NodePublicKey};
use super::path::Via;

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
    /// To a node no route is held for (the peer was removed meanwhile).
    pub no_route: u64,
    /// No connection to the peer's region nor to the home region.
    pub no_region: u64,
    /// The connection's queue was full (dropped; WireGuard retransmits).
    pub queue_full: u64,
    /// From a node key no peer is routed for.
    pub unknown_sender: u64,
}

/// The relays the data plane can send through, and which peer goes through which.
#[derive(Debug)]
pub struct Relay {
    conns: HashMap<i64, DerpHandle>,
    home: Option<i64>,
    /// The region each routed node is reached through.
    routes: HashMap<NodePublicKey, i64>,
    inbound: mpsc::Receiver<RelayIn>,
    counters: RelayCounters,
}

impl Relay {
    /// A relay set with no connections yet; `inbound` receives what every connection
    /// delivers (see [`forward_events`]).
    pub fn new(inbound: mpsc::Receiver<RelayIn>) -> Self {
        Self {
            conns: HashMap::new(),
            home: None,
            routes: HashMap::new(),
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

    /// Routes `key` through `region` and returns the path to it.
    pub fn route(&mut self, key: NodePublicKey, region: i64) -> Via {
        if self.routes.insert(key, region) != Some(region) {
            debug!(peer = %key.short(), region, "relay route");
        }
        Via::Derp(key)
    }

    /// Stops routing `key`.
    pub fn unroute(&mut self, key: &NodePublicKey) {
        self.routes.remove(key);
    }

    /// Whether a route is held for `key`.
    pub fn is_routed(&self, key: &NodePublicKey) -> bool {
        self.routes.contains_key(key)
    }

    /// Whether a packet relayed from `from` may enter: only nodes we route for are
    /// believed (counted when not).
    pub fn admit(&mut self, from: &NodePublicKey) -> bool {
        if self.routes.contains_key(from) {
            return true;
        }
        self.counters.unknown_sender += 1;
        trace!(from = %from.short(), "relayed packet from a node we route nothing for");
        false
    }

    /// Queues `data` for the node `to`. Never waits.
    pub fn send(&mut self, to: &NodePublicKey, data: &[u8]) {
        let Some(region) = self.routes.get(to) else {
            self.counters.no_route += 1;
            return;
        };
        let conn = self
            .conns
            .get(region)
            .or_else(|| self.home.and_then(|h| self.conns.get(&h)));
        let Some(conn) = conn else {
            self.counters.no_region += 1;
            return;
        };
        match conn.try_send(*to, Bytes::copy_from_slice(data)) {
            Ok(true) => {}
            Ok(false) | Err(_) => self.counters.queue_full += 1,
        }
    }

    /// The region whose connection carries packets to `key` (the peer's own when
    /// connected, else the home region).
    pub fn region_of(&self, key: &NodePublicKey) -> Option<i64> {
        let region = self.routes.get(key)?;
        if self.conns.contains_key(region) {
            Some(*region)
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
    fn routes_are_by_key_and_unrouted_senders_are_counted() {
        let (_tx, rx) = mpsc::channel(1);
        let mut r = Relay::new(rx);
        assert_eq!(r.route(key(1), 999), Via::Derp(key(1)));
        r.route(key(2), 998);
        assert!(r.is_routed(&key(1)) && r.admit(&key(2)));
        r.route(key(1), 1);
        r.unroute(&key(1));
        assert!(!r.admit(&key(1)));
        assert_eq!(r.counters().unknown_sender, 1);
        assert_eq!(r.region_of(&key(1)), None);
    }

    #[test]
    fn sends_without_a_route_or_region_are_counted_not_panics() {
        let (_tx, rx) = mpsc::channel(1);
        let mut r = Relay::new(rx);
        r.send(&key(9), b"x");
        assert_eq!(r.counters().no_route, 1);
        r.route(key(1), 999);
        r.send(&key(1), b"x");
        assert_eq!(r.counters().no_region, 1);
        assert_eq!(r.region_of(&key(1)), None, "no connection and no home");
    }
}
