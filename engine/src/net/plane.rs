//! The data plane's core: the WireGuard peer set, the direct-path state, the relay table,
//! the STUN prober and the in-tunnel resolver as one value you feed — a packet from the
//! device, a datagram from a path, a command, the time — and whose output waits in its
//! [`Outbox`] for the shell ([`super::runner`]) to pull. No sockets and no waiting here:
//! DERP sends are pushes onto the connections' queues, and command replies go on oneshot
//! channels.
//!
//! The packet walk: a device packet enters [`Plane::handle_device_packet`] (the resolver
//! answers its own queries, the rest is encrypted by the peer set) and leaves as a datagram
//! in the outbox; a datagram enters [`Plane::handle_udp`] or [`Plane::handle_relayed`],
//! passes the one demux ([`path::classify`]) to the STUN prober, disco or WireGuard, and
//! leaves as a device packet in the outbox.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use codervpn_dns::SharedZone;
use tracing::{debug, trace, warn};

use super::command::{NotWireGuard, RunOptions, WgCommand, WgStats};
use super::derp::NodePublicKey;
use super::direct::{DirectPaths, DiscoDropped};
use super::dns_intercept::{DnsIntercept, Intercepted};
use super::netcheck::{Netcheck, StunReport};
use super::outbox::Outbox;
use super::path::{self, Kind, Via};
use super::pings::{PendingPings, PingError};
use super::relay::{Relay, RelayIn};
use super::traffic::Way;
use super::wg::{Emit, PeerSet};

/// Scratch space for one packet (and WireGuard's overhead).
const BUF: usize = 65_536 + 64;

/// What a command asks of the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Nothing.
    Done,
    /// Bind a new UDP socket, then call [`Plane::rebound`].
    Rebind,
}

/// The data plane's state. See the module documentation.
pub struct Plane {
    peers: PeerSet,
    direct: Option<DirectPaths>,
    netcheck: Netcheck,
    dns: Option<(Arc<SharedZone>, DnsIntercept)>,
    pings: PendingPings,
    not_wg: NotWireGuard,
    disco_dropped: DiscoDropped,
    /// What waits for the shell, and the relays.
    pub out: Outbox,
    buf: Vec<u8>,
    /// The STUN report changed since the shell last asked.
    report_changed: bool,
}

impl Plane {
    /// A plane with `peers` and what `opts` add; `opts.report` is the shell's, not used
    /// here.
    pub fn new(peers: PeerSet, opts: RunOptions, now: Instant) -> Self {
        let RunOptions {
            dns,
            relay,
            disco,
            paths,
            report: _,
        } = opts;
        Self {
            direct: disco.map(|key| DirectPaths::new(key, peers.public_key(), paths)),
            peers,
            netcheck: Netcheck::default(),
            dns: dns.map(|zone| (zone, DnsIntercept::new(now))),
            pings: PendingPings::default(),
            not_wg: NotWireGuard::default(),
            disco_dropped: DiscoDropped::default(),
            out: Outbox::new(relay),
            buf: vec![0; BUF],
            report_changed: true,
        }
    }

    /// A packet read from the device.
    pub fn handle_device_packet(&mut self, now: Instant, packet: &[u8]) {
        let out = &mut self.out;
        let intercepted = match &mut self.dns {
            Some((zone, dns)) => dns.intercept(now, packet, &zone.load(), &mut |p| {
                out.emit(Emit::Tunnel(p));
            }),
            None => Intercepted::No,
        };
        match intercepted {
            Intercepted::No => self
                .peers
                .encapsulate(packet, &mut self.buf, &mut |e| out.emit(e)),
            Intercepted::Answered => {}
            Intercepted::Dropped => trace!("DNS query dropped"),
        }
    }

    /// A datagram from the UDP socket.
    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.receive(now, Via::Udp(from), None, datagram);
    }

    /// A packet a relay delivered. Only nodes we route for are believed.
    pub fn handle_relayed(&mut self, now: Instant, r: &RelayIn) {
        let from = Via::Derp(r.from);
        let disco = path::classify(&from, &r.data) == Kind::Disco;
        if !disco && !self.out.relay.as_mut().is_some_and(|rl| rl.admit(&r.from)) {
            return;
        }
        self.receive(now, from, Some(r.region), &r.data);
    }

    /// The one inbound demux: STUN to the prober, disco to the direct-path state, the rest
    /// to WireGuard.
    fn receive(&mut self, now: Instant, from: Via, region: Option<i64>, datagram: &[u8]) {
        let out = &mut self.out;
        match path::classify(&from, datagram) {
            Kind::Stun => {
                self.not_wg.stun += 1;
                if let Via::Udp(addr) = from {
                    self.report_changed |= self.netcheck.handle_response(now, addr, datagram);
                }
            }
            Kind::Disco => {
                self.not_wg.disco += 1;
                let Some(d) = &mut self.direct else {
                    self.disco_dropped.unknown_sender += 1;
                    trace!(%from, "disco packet dropped (no disco key)");
                    return;
                };
                let send = &mut |s| out.send_disco(s);
                match (from, region) {
                    (Via::Udp(addr), _) => d.handle_udp(now, addr, datagram, &mut self.peers, send),
                    (Via::Derp(key), region) => d.handle_relayed(
                        now,
                        region.unwrap_or_default(),
                        &key,
                        datagram,
                        &mut self.peers,
                        send,
                    ),
                }
                self.pings.answer(d, out.relay.as_ref());
            }
            Kind::WireGuard => {
                let way = if from.is_derp() { Way::Derp } else { Way::Udp };
                out.traffic.received(way, datagram);
                self.peers
                    .decapsulate(from, datagram, &mut self.buf, &mut |e| out.emit(e));
            }
        }
    }

    /// Runs the timers: WireGuard's, disco's, the prober's, the resolver's.
    pub fn handle_timeout(&mut self, now: Instant) {
        let out = &mut self.out;
        self.peers
            .update_timers(now, &mut self.buf, &mut |e| out.emit(e));
        if let Some(d) = &mut self.direct {
            d.handle_timeout(now, &mut self.peers, &mut |s| out.send_disco(s));
        }
        self.pings.prune();
        if self.netcheck.poll_timeout().is_some_and(|t| t <= now) {
            self.report_changed |= self
                .netcheck
                .handle_timeout(now, &mut |to, p| out.push_udp(to, &p));
        }
        if let Some((zone, dns)) = &mut self.dns {
            dns.handle_timeout(now, &zone.load(), &mut |p| out.push_tunnel(p));
        }
    }

    /// The network changed (new addresses, or a new socket): re-STUN now, and distrust
    /// every direct path until it answers again.
    pub fn network_changed(&mut self, now: Instant) {
        self.netcheck.restun(now);
        let out = &mut self.out;
        if let Some(d) = &mut self.direct {
            d.network_changed(now, &mut self.peers, &mut |s| out.send_disco(s));
        }
    }

    /// The shell bound a new UDP socket (a wake): what a suspend leaves stale is renewed —
    /// every DERP connection must prove it is alive (upstream's rebind), WireGuard sessions
    /// start over, the network counts as changed.
    pub fn rebound(&mut self, now: Instant) {
        if let Some(r) = &self.out.relay {
            r.probe_all(super::derp::PROBE_TIMEOUT);
        }
        self.peers.reset_sessions();
        self.network_changed(now);
        self.report_changed = true;
    }

    /// The STUN report, when it changed since the last call.
    pub fn take_report(&mut self) -> Option<&StunReport> {
        std::mem::take(&mut self.report_changed).then(|| self.netcheck.report())
    }

    /// The relays, for the shell to wait on what they deliver.
    pub fn relay_mut(&mut self) -> Option<&mut Relay> {
        self.out.relay.as_mut()
    }

    /// Applies a command. Replies go out on the command's channel.
    pub fn handle_command(&mut self, now: Instant, cmd: WgCommand) -> Control {
        let out = &mut self.out;
        match cmd {
            WgCommand::UpsertPeer(p) => self.peers.upsert_peer(p),
            WgCommand::UpsertRelayedPeer {
                config,
                derp_region,
            } => {
                let via = match out.relay.as_mut() {
                    Some(r) => {
                        Some(r.route(NodePublicKey::from_bytes(config.public_key), derp_region))
                    }
                    None => {
                        warn!("a relayed peer was added to a data plane without relays");
                        None
                    }
                };
                self.peers.upsert_peer_via(config, via);
            }
            WgCommand::RemovePeer(k) => {
                self.peers.remove_peer(&k);
                if let Some(d) = &mut self.direct {
                    d.remove_peer(&k);
                }
                if let Some(r) = out.relay.as_mut() {
                    r.unroute(&NodePublicKey::from_bytes(k));
                }
            }
            WgCommand::SetPeerDisco {
                key,
                disco,
                endpoints,
            } => match &mut self.direct {
                Some(d) => {
                    let relayed = out
                        .relay
                        .as_ref()
                        .is_some_and(|r| r.is_routed(&NodePublicKey::from_bytes(key)));
                    d.set_peer(
                        now,
                        key,
                        disco,
                        &endpoints,
                        relayed,
                        &mut self.peers,
                        &mut |s| out.send_disco(s),
                    );
                }
                None => debug!("a peer disco key was given to a data plane without disco"),
            },
            WgCommand::SetOwnEndpoints(endpoints) => match &mut self.direct {
                Some(d) => d.set_own_endpoints(endpoints),
                None => debug!("own endpoints given to a data plane without disco"),
            },
            WgCommand::NetworkChanged => self.network_changed(now),
            WgCommand::Rebind => return Control::Rebind,
            WgCommand::SetStunServers(servers) => self.netcheck.set_servers(now, servers),
            WgCommand::SetHomeRegion(region) => match out.relay.as_mut() {
                Some(r) => r.set_home(region),
                None => warn!(
                    region,
                    "a home region was set on a data plane without relays"
                ),
            },
            WgCommand::AddRelay {
                region,
                handle,
                home,
            } => match out.relay.as_mut() {
                Some(r) => r.add_region(region, handle, home),
                None => warn!(
                    region,
                    "a DERP region was added to a data plane without relays"
                ),
            },
            WgCommand::Stats(tx) => {
                let _ = tx.send(self.stats());
            }
            WgCommand::Ping { addr, reply } => {
                let sent = match (&mut self.direct, self.peers.peer_for(addr)) {
                    (_, None) => Err(PingError::NoPeer(addr)),
                    (None, Some(_)) => Err(PingError::NoDisco),
                    (Some(d), Some(key)) => d
                        .user_ping(now, key, &mut |s| out.send_disco(s))
                        .map(|tx_id| (tx_id, key))
                        .map_err(PingError::from),
                };
                match sent {
                    Ok((tx_id, key)) => self.pings.insert(tx_id, key, reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
        Control::Done
    }

    /// A snapshot of the plane's state.
    pub fn stats(&self) -> WgStats {
        let mut dropped = self.disco_dropped;
        let direct = self.direct.as_ref();
        if let Some(d) = direct {
            let more = d.dropped();
            dropped.unknown_sender += more.unknown_sender;
            dropped.undecryptable += more.undecryptable;
            dropped.call_me_maybe_over_udp += more.call_me_maybe_over_udp;
        }
        let relay = self.out.relay.as_ref();
        WgStats {
            peers: self
                .peers
                .stats()
                .map(|mut s| {
                    s.path = direct.and_then(|d| d.path(&s.public_key));
                    s.relay_latency = direct.and_then(|d| d.relay_latency(&s.public_key));
                    s.derp_region =
                        relay.and_then(|r| r.region_of(&NodePublicKey::from_bytes(s.public_key)));
                    s
                })
                .collect(),
            disco_dropped: dropped,
            dropped: self.peers.counters().clone(),
            udp_send_failed: self.out.udp_send_failed,
            device_write_failed: self.out.device_write_failed,
            relay: relay.map(|r| r.counters().clone()).unwrap_or_default(),
            not_wireguard: self.not_wg,
            stun: self.netcheck.stats(),
            traffic: self.out.traffic,
            dns: self
                .dns
                .as_ref()
                .map(|(_, d)| d.counters())
                .unwrap_or_default(),
            derp: relay.map(Relay::connections).unwrap_or_default(),
            home_region: relay.and_then(Relay::home),
        }
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
}
