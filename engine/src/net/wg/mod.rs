//! The WireGuard peer set: one boringtun `Tunn` per peer, cryptokey routing by allowed IPs,
//! endpoint roaming, timers and counters. Sans-IO: packets in, packets out through an
//! `emit` sink; sockets and the packet device belong to the shell (`super::runner`).
//!
//! boringtun keeps its own clock inside `Tunn` (it has no way to pass time in); everything
//! this module times itself takes `now` from the caller.

mod allowed_ips;
pub mod config;
pub mod unreachable;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use tracing::{debug, trace};

use super::path::Via;

pub use allowed_ips::AllowedIps;

/// Bytes WireGuard adds to a packet (header, counter, tag).
pub const OVERHEAD: usize = 32;
/// Smallest buffer every call needs: a handshake initiation is 148 bytes.
pub const MIN_BUF: usize = 148;
/// Handshake initiations accepted per second before cookies are demanded.
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// A peer as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: [u8; 32],
    pub preshared_key: Option<[u8; 32]>,
    pub allowed_ips: Vec<IpNet>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
}

/// Something to write: a datagram to the network, or a packet to the device.
#[derive(Debug, PartialEq, Eq)]
pub enum Emit<'a> {
    Network { to: Via, data: &'a [u8] },
    Tunnel(&'a [u8]),
}

/// Packets dropped, by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// From the device, to an address no peer's allowed IPs cover (or not IP at all).
    pub no_route: u64,
    /// To a peer whose endpoint is not known yet.
    pub no_endpoint: u64,
    /// From the network, not a WireGuard message.
    pub garbage: u64,
    /// From the network, for a peer we do not have.
    pub unknown_peer: u64,
    /// From the network, rejected by the peer's session (bad MAC, replay, stale, rate limit).
    pub rejected: u64,
    /// Decrypted, but its source address is outside the sending peer's allowed IPs.
    pub source_not_allowed: u64,
    /// ICMPv6 unreachable errors written to the device ([`mod@unreachable`]).
    pub unreachable_sent: u64,
}

/// What a peer's state looks like from outside.
#[derive(Debug, Clone)]
pub struct PeerStats {
    pub public_key: [u8; 32],
    /// The addresses routed to the peer.
    pub allowed_ips: Vec<IpNet>,
    pub endpoint: Option<Via>,
    pub since_last_handshake: Option<Duration>,
    pub tx_bytes: usize,
    pub rx_bytes: usize,
    /// The path disco chose for a peer with a disco key (filled in by the runner).
    pub path: Option<crate::net::disco::Path>,
    /// Round-trip time of the last disco ping through DERP (filled in by the runner).
    pub relay_latency: Option<Duration>,
    /// The DERP region our packets to the peer go through when relayed (filled in by the
    /// runner).
    pub derp_region: Option<i64>,
}

struct Peer {
    tunn: Tunn,
    config: PeerConfig,
    endpoint: Option<Via>,
    /// Set by [`PeerSet::set_endpoint`]: the endpoint is chosen outside (disco) and neither
    /// roaming nor an upsert moves it.
    pinned: bool,
    liveness: unreachable::Liveness,
}

impl Peer {
    /// An authenticated datagram came from `from`: move there unless pinned.
    fn roam(&mut self, from: Via) {
        if !self.pinned {
            self.endpoint = Some(from);
        }
    }
}

/// Every peer of one WireGuard interface.
pub struct PeerSet {
    private: StaticSecret,
    public: PublicKey,
    rate_limiter: Arc<RateLimiter>,
    last_limiter_reset: Option<Instant>,
    peers: HashMap<u32, Peer>,
    by_key: HashMap<[u8; 32], u32>,
    routes: AllowedIps<u32>,
    next_index: u32,
    counters: Counters,
    /// The last timer tick (rate limits for the ICMPv6 errors).
    now: Instant,
    icmp: Vec<u8>,
}

impl PeerSet {
    pub fn new(private_key: [u8; 32]) -> Self {
        let private = StaticSecret::from(private_key);
        let public = PublicKey::from(&private);
        Self {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            private,
            public,
            last_limiter_reset: None,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            routes: AllowedIps::new(),
            next_index: 1,
            counters: Counters::default(),
            now: Instant::now(),
            icmp: Vec::with_capacity(1280),
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// The key of the peer whose allowed IPs hold `addr`.
    pub fn peer_for(&self, addr: std::net::IpAddr) -> Option<[u8; 32]> {
        let index = self.routes.lookup(addr)?;
        self.peers.get(index).map(|p| p.config.public_key)
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Adds a peer, or updates one with the same key in place (its sessions survive; its
    /// allowed IPs and endpoint are replaced).
    pub fn upsert_peer(&mut self, config: PeerConfig) {
        self.upsert_peer_via(config, None);
    }

    /// [`Self::upsert_peer`] for a peer that is also reachable through `fallback` (DERP):
    /// its endpoint becomes the configured UDP address, else `fallback` (unless pinned).
    pub fn upsert_peer_via(&mut self, config: PeerConfig, fallback: Option<Via>) {
        let index = match self.by_key.get(&config.public_key) {
            Some(&index) => {
                self.routes.retain(|i| *i != index);
                // Keys and keepalive live inside the Tunn: a change needs a new one.
                let renew = self.peers.get(&index).is_some_and(|p| {
                    p.config.preshared_key != config.preshared_key
                        || p.config.persistent_keepalive != config.persistent_keepalive
                });
                let tunn = renew.then(|| self.new_tunn(&config, index));
                if let Some(p) = self.peers.get_mut(&index) {
                    if let Some(tunn) = tunn {
                        p.tunn = tunn;
                    }
                    if !p.pinned {
                        p.endpoint = config.endpoint.map(Via::Udp).or(fallback).or(p.endpoint);
                    }
                    p.config = config.clone();
                }
                index
            }
            None => {
                let index = self.next_index;
                self.next_index = (self.next_index + 1) & 0x00ff_ffff;
                let tunn = self.new_tunn(&config, index);
                debug!(peer = %key_prefix(&config.public_key), index, "peer added");
                self.by_key.insert(config.public_key, index);
                self.peers.insert(
                    index,
                    Peer {
                        tunn,
                        endpoint: config.endpoint.map(Via::Udp).or(fallback),
                        config: config.clone(),
                        pinned: false,
                        liveness: Default::default(),
                    },
                );
                index
            }
        };
        for net in &config.allowed_ips {
            self.routes.insert(*net, index);
        }
    }

    fn new_tunn(&self, config: &PeerConfig, index: u32) -> Tunn {
        Tunn::new(
            self.private.clone(),
            PublicKey::from(config.public_key),
            config.preshared_key,
            config.persistent_keepalive,
            index,
            Some(self.rate_limiter.clone()),
        )
    }

    /// Drops every session (after a wake): the monotonic clock stood still while the
    /// machine slept, so a session can look fresh here that the peer expired long ago;
    /// the next packet to each peer starts a new handshake instead of waiting 15 s for
    /// WireGuard to notice. Keys, endpoints and routes stay.
    pub fn reset_sessions(&mut self) {
        let fresh: Vec<(u32, Tunn)> = self
            .peers
            .iter()
            .map(|(index, p)| (*index, self.new_tunn(&p.config, *index)))
            .collect();
        for (index, tunn) in fresh {
            if let Some(p) = self.peers.get_mut(&index) {
                p.tunn = tunn;
                p.liveness = Default::default();
            }
        }
        debug!(peers = self.peers.len(), "WireGuard sessions reset");
    }

    /// Pins the peer's endpoint to `addr`: from now on only another call moves it (no
    /// roaming to a datagram's source, no change on upsert). Returns whether the peer exists.
    pub fn set_endpoint(&mut self, public_key: &[u8; 32], addr: Via) -> bool {
        let Some(peer) = self
            .by_key
            .get(public_key)
            .and_then(|i| self.peers.get_mut(i))
        else {
            return false;
        };
        peer.endpoint = Some(addr);
        peer.pinned = true;
        true
    }

    /// Removes a peer and its routes. Returns whether it existed.
    pub fn remove_peer(&mut self, public_key: &[u8; 32]) -> bool {
        let Some(index) = self.by_key.remove(public_key) else {
            return false;
        };
        self.peers.remove(&index);
        self.routes.retain(|i| *i != index);
        debug!(peer = %key_prefix(public_key), "peer removed");
        true
    }

    /// A packet from the device: encrypt it for the peer that owns its destination.
    /// Starts a handshake (and queues the packet) when there is no session yet.
    pub fn encapsulate(&mut self, packet: &[u8], buf: &mut [u8], emit: &mut impl FnMut(Emit<'_>)) {
        let Some(dst) = Tunn::dst_address(packet) else {
            self.counters.no_route += 1;
            return;
        };
        let Some(&index) = self.routes.lookup(dst) else {
            self.counters.no_route += 1;
            // Dropped, not answered: right after a join, an agent's name can resolve
            // before its node has made it a peer, and TCP's retry then finds it.
            trace!(%dst, "no peer for destination");
            return;
        };
        let Some(peer) = self.peers.get_mut(&index) else {
            self.counters.no_route += 1;
            return;
        };
        peer.liveness.sent();
        if peer.liveness.dead() && unreachable::may_answer(&mut peer.liveness.last_error, self.now)
        {
            trace!(%dst, "peer does not answer; unreachable");
            if unreachable::icmp6_unreachable(packet, &mut self.icmp) {
                self.counters.unreachable_sent += 1;
                emit(Emit::Tunnel(&self.icmp));
            }
        }
        match peer.tunn.encapsulate(packet, buf) {
            TunnResult::WriteToNetwork(data) => match peer.endpoint {
                Some(to) => emit(Emit::Network { to, data }),
                None => self.counters.no_endpoint += 1,
            },
            TunnResult::Done => {}
            TunnResult::Err(e) => trace!(error = ?e, "encapsulate failed"),
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
        }
    }

    /// A datagram from the network: handshake messages are answered, data is decrypted,
    /// checked against the sender's allowed IPs and handed to the device. An authenticated
    /// datagram moves the peer's endpoint to its source (roaming).
    pub fn decapsulate(
        &mut self,
        from: Via,
        datagram: &[u8],
        buf: &mut [u8],
        emit: &mut impl FnMut(Emit<'_>),
    ) {
        // Only a handshake response or data proves the peer hears us: a peer that cannot
        // reach us keeps sending handshake initiations.
        let parsed = Tunn::parse_incoming_packet(datagram);
        let answers = matches!(
            parsed,
            Ok(Packet::HandshakeResponse(_) | Packet::PacketData(_))
        );
        let index = match parsed {
            Err(_) => {
                self.counters.garbage += 1;
                return;
            }
            Ok(Packet::HandshakeInit(init)) => {
                // Check the MACs (and the rate limit) before spending a DH on the sender.
                if self
                    .rate_limiter
                    .verify_packet(Some(from.source_ip()), datagram, buf)
                    .is_err()
                {
                    self.counters.rejected += 1;
                    return;
                }
                match parse_handshake_anon(&self.private, &self.public, &init) {
                    Ok(half) => self.by_key.get(&half.peer_static_public).copied(),
                    Err(_) => {
                        self.counters.rejected += 1;
                        return;
                    }
                }
            }
            Ok(Packet::HandshakeResponse(p)) => Some(p.receiver_idx >> 8),
            Ok(Packet::PacketCookieReply(p)) => Some(p.receiver_idx >> 8),
            Ok(Packet::PacketData(p)) => Some(p.receiver_idx >> 8),
        };
        let Some(peer) = index.and_then(|i| self.peers.get_mut(&i)) else {
            self.counters.unknown_peer += 1;
            return;
        };
        let index = index.unwrap_or_default();
        let result = peer.tunn.decapsulate(Some(from.source_ip()), datagram, buf);
        if answers && !matches!(result, TunnResult::Err(_)) {
            peer.liveness.received();
        }
        match result {
            TunnResult::Done => peer.roam(from),
            TunnResult::Err(e) => {
                self.counters.rejected += 1;
                trace!(error = ?e, %from, "datagram rejected");
            }
            TunnResult::WriteToNetwork(data) => {
                peer.roam(from);
                emit(Emit::Network { to: from, data });
                // Packets queued while the handshake was pending go out now.
                while let TunnResult::WriteToNetwork(data) = peer.tunn.decapsulate(None, &[], buf) {
                    emit(Emit::Network { to: from, data });
                }
            }
            TunnResult::WriteToTunnelV4(data, src) => {
                peer.roam(from);
                deliver(
                    &self.routes,
                    &mut self.counters,
                    index,
                    IpAddr::V4(src),
                    data,
                    emit,
                );
            }
            TunnResult::WriteToTunnelV6(data, src) => {
                peer.roam(from);
                deliver(
                    &self.routes,
                    &mut self.counters,
                    index,
                    IpAddr::V6(src),
                    data,
                    emit,
                );
            }
        }
    }

    /// Runs every peer's timers (handshake retries, keepalives, session expiry). Call it
    /// every 100–250 ms.
    pub fn update_timers(&mut self, now: Instant, buf: &mut [u8], emit: &mut impl FnMut(Emit<'_>)) {
        if self
            .last_limiter_reset
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.rate_limiter.reset_count();
            self.last_limiter_reset = Some(now);
        }
        self.now = now;
        for peer in self.peers.values_mut() {
            let session = peer.tunn.time_since_last_handshake().is_some();
            peer.liveness.tick(now, session);
            match peer.tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(data) => match peer.endpoint {
                    Some(to) => emit(Emit::Network { to, data }),
                    None => self.counters.no_endpoint += 1,
                },
                TunnResult::Err(WireGuardError::ConnectionExpired) => {
                    trace!(peer = %key_prefix(&peer.config.public_key), "session expired");
                }
                TunnResult::Err(e) => trace!(error = ?e, "timer error"),
                TunnResult::Done
                | TunnResult::WriteToTunnelV4(..)
                | TunnResult::WriteToTunnelV6(..) => {}
            }
        }
    }

    pub fn stats(&self) -> impl Iterator<Item = PeerStats> + '_ {
        self.peers.values().map(|p| {
            let (since_last_handshake, tx_bytes, rx_bytes, _, _) = p.tunn.stats();
            PeerStats {
                public_key: p.config.public_key,
                allowed_ips: p.config.allowed_ips.clone(),
                endpoint: p.endpoint,
                since_last_handshake,
                tx_bytes,
                rx_bytes,
                path: None,
                relay_latency: None,
                derp_region: None,
            }
        })
    }
}

fn deliver(
    routes: &AllowedIps<u32>,
    counters: &mut Counters,
    index: u32,
    src: IpAddr,
    data: &[u8],
    emit: &mut impl FnMut(Emit<'_>),
) {
    if data.is_empty() {
        return; // keepalive
    }
    if routes.lookup(src) != Some(&index) {
        counters.source_not_allowed += 1;
        trace!(%src, "source outside the peer's allowed IPs");
        return;
    }
    emit(Emit::Tunnel(data));
}

/// The public key of a private key.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*private)).to_bytes()
}

/// The first 8 base64 characters of a key, for logs.
pub fn key_prefix(key: &[u8; 32]) -> String {
    use base64::Engine;
    let mut s = base64::engine::general_purpose::STANDARD.encode(key);
    s.truncate(8);
    s
}

#[cfg(test)]
mod tests;
