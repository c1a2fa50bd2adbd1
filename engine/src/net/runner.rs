//! The WireGuard shell: one task owns the peer set, the packet device, the UDP socket, the
//! DERP relays and the direct-path state ([`super::direct`]), and moves packets between
//! them. Each wake-up drains up to [`BATCH`] packets per side.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, trace, warn};

use std::os::fd::RawFd;

use std::sync::Arc;

use codervpn_dns::SharedZone;

use super::derp::{DerpConnStats, DerpHandle, NodePublicKey};
use super::direct::{DirectPaths, DiscoDropped, DiscoSend};
use super::disco::{self, DiscoPrivateKey, DiscoPublicKey, PathConfig};
use super::dns_intercept::{DnsCounters, DnsIntercept, Intercepted};
use super::netcheck::{Netcheck, NetcheckStats, StunReport, StunServer};
use super::pings::{PendingPings, PingError, PingReplyTx};
use super::relay::{self, Relay, RelayCounters, RelayIn};
use super::stun;
use super::traffic::{PathTraffic, Way};
use super::udp::Udp;
use super::udp_batch::{self, SendBatch};
use super::wg::{Counters, Emit, PeerConfig, PeerSet, PeerStats};
use crate::device::Device;

/// Packets handled per side per wake-up before the other side gets a turn.
pub const BATCH: usize = 64;
/// How often the peers' timers run.
pub const TIMER_TICK: Duration = Duration::from_millis(250);
const BUF: usize = 65_536;

/// Requests to the running data plane.
#[derive(Debug)]
pub enum WgCommand {
    UpsertPeer(PeerConfig),
    /// Upserts a peer reached through the DERP relay of `derp_region` (its endpoint, when
    /// not given, is the relay path). Needs [`RunOptions::relay`].
    UpsertRelayedPeer {
        config: PeerConfig,
        derp_region: i64,
    },
    /// Removes a peer (and its disco state).
    RemovePeer([u8; 32]),
    /// Gives a peer its disco key and the endpoints its node lists, so a direct path is
    /// looked for (needs [`RunOptions::disco`]; send after the peer's upsert).
    SetPeerDisco {
        key: [u8; 32],
        disco: DiscoPublicKey,
        endpoints: Vec<SocketAddr>,
    },
    /// Our own endpoints, sent to peers in call-me-maybe.
    SetOwnEndpoints(Vec<SocketAddr>),
    /// The network changed (new addresses): distrust every direct path, ping again and
    /// re-STUN.
    NetworkChanged,
    /// Wake: close the UDP socket and bind a new one (the same port when it is free), then
    /// as [`WgCommand::NetworkChanged`].
    Rebind,
    /// The STUN servers to probe from the UDP socket (from the DERP map).
    SetStunServers(Vec<StunServer>),
    /// Our home DERP region changed (peers with no connection of their own go through it).
    SetHomeRegion(i64),
    /// Adds (or replaces) the connection to a DERP region; `home` marks our own.
    AddRelay {
        region: i64,
        handle: DerpHandle,
        home: bool,
    },
    Stats(oneshot::Sender<WgStats>),
    /// A disco ping to the peer holding `addr`, the way its packets go now (`codervpn
    /// ping`); the pong, or why there is none, goes to `reply`. Nothing answers when no
    /// pong comes: the asker times out.
    Ping {
        addr: std::net::IpAddr,
        reply: PingReplyTx,
    },
}

/// A snapshot of the data plane's state.
#[derive(Debug, Clone, Default)]
pub struct WgStats {
    pub peers: Vec<PeerStats>,
    pub dropped: Counters,
    /// Datagrams the UDP socket would not take (send buffer full, unreachable).
    pub udp_send_failed: u64,
    /// Packets the device would not take.
    pub device_write_failed: u64,
    /// Relayed packets that went nowhere.
    pub relay: RelayCounters,
    /// Datagrams that were not WireGuard and were not handed to it.
    pub not_wireguard: NotWireGuard,
    /// Disco packets dropped (unknown sender, forged, undecryptable), or all of them
    /// without [`RunOptions::disco`] (then counted in `not_wireguard.disco` only).
    pub disco_dropped: DiscoDropped,
    /// STUN probing from the UDP socket.
    pub stun: NetcheckStats,
    /// WireGuard traffic by path.
    pub traffic: PathTraffic,
    /// The in-tunnel resolver.
    pub dns: DnsCounters,
    /// Our DERP connections by region.
    pub derp: Vec<(i64, DerpConnStats)>,
    pub home_region: Option<i64>,
}

/// What the data plane learnt about the network, for the session to publish
/// ([`RunOptions::report`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetReport {
    /// The UDP socket's port (it may change on [`WgCommand::Rebind`]).
    pub port: u16,
    /// The last STUN round with answers.
    pub stun: StunReport,
}

/// Disco and STUN packets arriving on the WireGuard paths (UDP or DERP), kept away from
/// WireGuard: disco goes to the direct-path state (with [`RunOptions::disco`]), STUN to the
/// prober.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotWireGuard {
    /// Packets that look like disco (`TS💬` magic, 62-byte header), by UDP or DERP.
    pub disco: u64,
    /// STUN packets on the UDP socket.
    pub stun: u64,
}

/// What a datagram on the UDP socket is.
enum Kind {
    Stun,
    Disco,
    WireGuard,
}

impl NotWireGuard {
    /// Classifies `datagram` and counts it when it is disco or STUN (upstream magicsock
    /// checks STUN first, then disco, then hands the rest to WireGuard).
    fn classify(&mut self, datagram: &[u8]) -> Kind {
        if stun::is_stun(datagram) {
            self.stun += 1;
            Kind::Stun
        } else if disco::looks_like_disco(datagram) {
            self.disco += 1;
            Kind::Disco
        } else {
            Kind::WireGuard
        }
    }
}

/// What the data plane does besides WireGuard.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Answer queries to the in-tunnel resolver (`[fd60:627a:a42b::53]:53`, UDP and TCP)
    /// from this zone; they never reach a peer.
    pub dns: Option<Arc<SharedZone>>,
    /// Reach peers through DERP relays too.
    pub relay: Option<Relay>,
    /// Our disco key: answer disco and look for direct paths to peers given a disco key
    /// ([`WgCommand::SetPeerDisco`]). Without it disco packets are counted and dropped.
    pub disco: Option<DiscoPrivateKey>,
    /// Path timing and policy (`disable_direct` keeps every peer on DERP).
    pub paths: PathConfig,
    /// Where the socket's port and the STUN results go whenever they change.
    pub report: Option<watch::Sender<NetReport>>,
}

/// Moves packets between `device` and `udp` (and the relays of `opts`) through `peers`
/// until `shutdown` completes.
pub async fn run<D: Device>(
    mut peers: PeerSet,
    device: D,
    mut udp: Udp,
    mut commands: mpsc::Receiver<WgCommand>,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let RunOptions {
        dns,
        relay,
        disco,
        paths,
        report,
    } = opts;
    let mut netcheck = Netcheck::default();
    let mut rebind = false;
    let publish = |udp: &Udp, netcheck: &Netcheck| {
        if let Some(r) = &report {
            let now = NetReport {
                port: udp.local_port().unwrap_or(0),
                stun: netcheck.report().clone(),
            };
            r.send_if_modified(|old| {
                let changed = *old != now;
                *old = now;
                changed
            });
        }
    };
    publish(&udp, &netcheck);
    let mut direct = disco.map(|key| DirectPaths::new(key, peers.public_key(), paths));
    let mut disco_dropped = DiscoDropped::default();
    let mut dns = dns.map(|zone| {
        (
            zone,
            DnsIntercept::new(tokio::time::Instant::now().into_std()),
        )
    });
    let mut dev_buf = vec![0u8; BUF];
    let mut net_buf = vec![0u8; BUF];
    let mut out = vec![0u8; BUF + 64];
    let gro = udp.enable_gro();
    let mut outbox = Outbox {
        fd: udp.raw_fd(),
        batch: SendBatch::default(),
        gso: true,
        udp_send_failed: 0,
        device_write_failed: 0,
        relay,
        traffic: PathTraffic::default(),
    };
    let mut pings = PendingPings::default();
    let mut not_wg = NotWireGuard::default();
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    info!(
        peers = peers.len(),
        port = udp.local_port().unwrap_or(0),
        gro,
        "WireGuard data plane running"
    );
    loop {
        if std::mem::take(&mut rebind) {
            // Upstream's rebind pings every DERP connection and redials the silent ones:
            // after a suspend a connection can look open and carry nothing.
            if let Some(r) = &outbox.relay {
                r.probe_all(super::derp::PROBE_TIMEOUT);
            }
            peers.reset_sessions();
            udp = rebound(udp)?;
            outbox.fd = udp.raw_fd();
            let gro = udp.enable_gro();
            debug!(gro, "receive coalescing on the new socket");
            network_changed(&mut netcheck, &mut direct, &mut peers, &mut outbox, &udp);
            publish(&udp, &netcheck);
            outbox.flush(&device);
        }
        tokio::select! {
            r = device.recv(&mut dev_buf) => {
                let mut n = r.map_err(|e| io::Error::new(e.kind(), format!("reading the packet device: {e}")))?;
                let now = tokio::time::Instant::now().into_std();
                for i in 0..BATCH {
                    let intercepted = match &mut dns {
                        Some((zone, dns)) => dns.intercept(now, &dev_buf[..n], &zone.load(), &mut |p| outbox.emit(&device, Emit::Tunnel(p))),
                        None => Intercepted::No,
                    };
                    match intercepted {
                        Intercepted::No => peers.encapsulate(&dev_buf[..n], &mut out, &mut |e| outbox.emit(&device, e)),
                        Intercepted::Answered => {}
                        Intercepted::Dropped => trace!("DNS query dropped"),
                    }
                    if i + 1 == BATCH {
                        break;
                    }
                    n = match device.try_recv(&mut dev_buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(io::Error::new(e.kind(), format!("reading the packet device: {e}"))),
                    };
                }
                outbox.flush(&device);
            }
            r = udp.readable() => {
                r.map_err(|e| io::Error::new(e.kind(), format!("waiting on the UDP socket: {e}")))?;
                for _ in 0..BATCH {
                    match udp.try_recv_batch(&mut net_buf) {
                        Ok((n, from, segment)) => {
                            trace!(%from, len = n, segment, "datagrams");
                            for datagram in net_buf[..n].chunks(segment) {
                                match not_wg.classify(datagram) {
                                    Kind::Stun => {
                                        let now = tokio::time::Instant::now().into_std();
                                        if netcheck.handle_response(now, from, datagram) {
                                            publish(&udp, &netcheck);
                                        }
                                    }
                                    Kind::Disco => match &mut direct {
                                        Some(d) => {
                                            let now = tokio::time::Instant::now().into_std();
                                            d.handle_udp(now, from, datagram, &mut peers, &mut |s| outbox.send_disco(&udp, s));
                                            pings.answer(d, outbox.relay.as_ref());
                                        }
                                        None => disco_dropped.unknown_sender += 1,
                                    },
                                    Kind::WireGuard => {
                                        outbox.traffic.received(Way::Udp, datagram);
                                        peers.decapsulate(from, datagram, &mut out, &mut |e| outbox.emit(&device, e));
                                    }
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors surface here (ECONNREFUSED…): not fatal for a UDP server.
                        Err(e) => debug!(error = %e, "UDP receive error"),
                    }
                }
                outbox.flush(&device);
            }
            Some(first) = next_relayed(&mut outbox.relay) => {
                let mut next = Some(first);
                let mut n = 0;
                while let Some(RelayIn { from, data, .. }) = next {
                    if disco::looks_like_disco(&data) {
                        not_wg.disco += 1;
                        match &mut direct {
                            Some(d) => {
                                let now = tokio::time::Instant::now().into_std();
                                d.handle_relayed(now, &from, &data, &mut peers, &mut |s| outbox.send_disco(&udp, s));
                                pings.answer(d, outbox.relay.as_ref());
                            }
                            None => {
                                disco_dropped.unknown_sender += 1;
                                trace!(from = %from.short(), "relayed disco packet dropped");
                            }
                        }
                    } else if let Some(src) = outbox.relay.as_mut().and_then(|r| r.source(&from)) {
                        outbox.traffic.received(Way::Derp, &data);
                        peers.decapsulate(src, &data, &mut out, &mut |e| outbox.emit(&device, e));
                    }
                    n += 1;
                    next = if n < BATCH { outbox.relay.as_mut().and_then(Relay::try_recv) } else { None };
                }
                outbox.flush(&device);
            }
            _ = tick.tick() => {
                let now = tokio::time::Instant::now().into_std();
                peers.update_timers(now, &mut out, &mut |e| outbox.emit(&device, e));
                if let Some(d) = &mut direct {
                    d.handle_timeout(now, &mut peers, &mut |s| outbox.send_disco(&udp, s));
                }
                pings.prune();
                if netcheck.poll_timeout().is_some_and(|t| t <= now) {
                    let changed = netcheck.handle_timeout(now, &mut |to, p| outbox.send_udp(&udp, to, &p));
                    if changed {
                        publish(&udp, &netcheck);
                    }
                }
                if let Some((zone, dns)) = &mut dns {
                    dns.handle_timeout(now, &zone.load(), &mut |p| outbox.emit(&device, Emit::Tunnel(p)));
                }
                outbox.flush(&device);
            }
            cmd = commands.recv() => match cmd {
                Some(WgCommand::UpsertPeer(p)) => peers.upsert_peer(p),
                Some(WgCommand::UpsertRelayedPeer { mut config, derp_region }) => {
                    match outbox.relay.as_mut() {
                        Some(r) => {
                            let magic = r.route(NodePublicKey::from_bytes(config.public_key), derp_region);
                            config.endpoint = config.endpoint.or(magic);
                        }
                        None => warn!("a relayed peer was added to a data plane without relays"),
                    }
                    peers.upsert_peer(config);
                }
                Some(WgCommand::RemovePeer(k)) => {
                    peers.remove_peer(&k);
                    if let Some(d) = &mut direct {
                        d.remove_peer(&k);
                    }
                    if let Some(r) = outbox.relay.as_mut() {
                        r.unroute(&NodePublicKey::from_bytes(k));
                    }
                }
                Some(WgCommand::SetPeerDisco { key, disco, endpoints }) => match &mut direct {
                    Some(d) => {
                        let now = tokio::time::Instant::now().into_std();
                        let magic = outbox.relay.as_ref().and_then(|r| r.endpoint(&NodePublicKey::from_bytes(key)));
                        d.set_peer(now, key, disco, &endpoints, magic, &mut peers, &mut |s| outbox.send_disco(&udp, s));
                    }
                    None => debug!("a peer disco key was given to a data plane without disco"),
                },
                Some(WgCommand::SetOwnEndpoints(endpoints)) => match &mut direct {
                    Some(d) => d.set_own_endpoints(endpoints),
                    None => debug!("own endpoints given to a data plane without disco"),
                },
                Some(WgCommand::NetworkChanged) => {
                    network_changed(&mut netcheck, &mut direct, &mut peers, &mut outbox, &udp);
                }
                Some(WgCommand::Rebind) => rebind = true,
                Some(WgCommand::SetStunServers(servers)) => {
                    netcheck.set_servers(tokio::time::Instant::now().into_std(), servers);
                }
                Some(WgCommand::SetHomeRegion(region)) => match outbox.relay.as_mut() {
                    Some(r) => r.set_home(region),
                    None => warn!(region, "a home region was set on a data plane without relays"),
                },
                Some(WgCommand::AddRelay { region, handle, home }) => match outbox.relay.as_mut() {
                    Some(r) => r.add_region(region, handle, home),
                    None => warn!(region, "a DERP region was added to a data plane without relays"),
                },
                Some(WgCommand::Stats(tx)) => {
                    let mut dropped = disco_dropped;
                    if let Some(d) = &direct {
                        let more = d.dropped();
                        dropped.unknown_sender += more.unknown_sender;
                        dropped.undecryptable += more.undecryptable;
                        dropped.call_me_maybe_over_udp += more.call_me_maybe_over_udp;
                    }
                    let _ = tx.send(WgStats {
                        peers: peers
                            .stats()
                            .map(|mut s| {
                                s.path = direct.as_ref().and_then(|d| d.path(&s.public_key));
                                s.relay_latency = direct.as_ref().and_then(|d| d.relay_latency(&s.public_key));
                                s.derp_region = outbox.relay.as_ref().and_then(|r| {
                                    r.endpoint(&NodePublicKey::from_bytes(s.public_key)).and_then(|m| r.region_via(m))
                                });
                                s
                            })
                            .collect(),
                        disco_dropped: dropped,
                        dropped: peers.counters().clone(),
                        udp_send_failed: outbox.udp_send_failed,
                        device_write_failed: outbox.device_write_failed,
                        relay: outbox.relay.as_ref().map(|r| r.counters().clone()).unwrap_or_default(),
                        not_wireguard: not_wg,
                        stun: netcheck.stats(),
                        traffic: outbox.traffic,
                        dns: dns.as_ref().map(|(_, d)| d.counters()).unwrap_or_default(),
                        derp: outbox.relay.as_ref().map(Relay::connections).unwrap_or_default(),
                        home_region: outbox.relay.as_ref().and_then(Relay::home),
                    });
                }
                Some(WgCommand::Ping { addr, reply }) => {
                    let now = tokio::time::Instant::now().into_std();
                    let sent = match (&mut direct, peers.peer_for(addr)) {
                        (_, None) => Err(PingError::NoPeer(addr)),
                        (None, Some(_)) => Err(PingError::NoDisco),
                        (Some(d), Some(key)) => d
                            .user_ping(now, key, &mut |s| outbox.send_disco(&udp, s))
                            .map(|tx_id| (tx_id, key))
                            .map_err(PingError::from),
                    };
                    match sent {
                        Ok((tx_id, key)) => pings.insert(tx_id, key, reply),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                None => {}
            },
            () = &mut shutdown => {
                info!("WireGuard data plane stopping");
                return Ok(());
            }
        }
    }
}

/// Where emitted packets go: datagrams are batched per destination (segmentation
/// offload), device packets are written at once.
struct Outbox {
    fd: RawFd,
    batch: SendBatch,
    gso: bool,
    udp_send_failed: u64,
    device_write_failed: u64,
    relay: Option<Relay>,
    traffic: PathTraffic,
}

/// The next packet a relay delivered; never resolves without relays.
async fn next_relayed(relay: &mut Option<Relay>) -> Option<RelayIn> {
    match relay {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// The network changed (new addresses, or a new socket): re-STUN now, and distrust every
/// direct path until it answers again.
fn network_changed(
    netcheck: &mut Netcheck,
    direct: &mut Option<DirectPaths>,
    peers: &mut PeerSet,
    outbox: &mut Outbox,
    udp: &Udp,
) {
    let now = tokio::time::Instant::now().into_std();
    netcheck.restun(now);
    if let Some(d) = direct {
        d.network_changed(now, peers, &mut |s| outbox.send_disco(udp, s));
    }
}

/// A new UDP socket in place of `old`: on the same port when it is still free, else on
/// any (the session then publishes the new port).
fn rebound(old: Udp) -> io::Result<Udp> {
    let port = old.local_port().unwrap_or(0);
    drop(old);
    let udp = Udp::bind(port)
        .or_else(|e| {
            warn!(port, error = %e, "cannot rebind the UDP port; taking another");
            Udp::bind(0)
        })
        .map_err(|e| io::Error::new(e.kind(), format!("rebinding the UDP socket: {e}")))?;
    info!(port = udp.local_port().unwrap_or(0), "UDP socket rebound");
    Ok(udp)
}

impl Outbox {
    /// Sends one datagram over UDP at once (disco, STUN).
    fn send_udp(&mut self, udp: &Udp, to: SocketAddr, packet: &[u8]) {
        if let Err(e) = udp.try_send_to(packet, to) {
            self.udp_send_failed += 1;
            trace!(%to, error = %e, "UDP send failed");
        }
    }

    /// Sends a sealed disco packet: over UDP at once, or through the peer's relay.
    fn send_disco(&mut self, udp: &Udp, s: DiscoSend) {
        match s {
            DiscoSend::Udp { to, packet } => self.send_udp(udp, to, &packet),
            DiscoSend::Relay { magic, packet } => match self.relay.as_mut() {
                Some(r) => r.send(magic, &packet),
                None => self.udp_send_failed += 1,
            },
        }
    }

    fn emit<D: Device>(&mut self, device: &D, e: Emit<'_>) {
        match e {
            Emit::Network { to, data } if relay::is_magic(&to) => match self.relay.as_mut() {
                Some(r) => {
                    self.traffic.sent(Way::Derp, data);
                    r.send(to, data);
                }
                None => self.udp_send_failed += 1,
            },
            Emit::Network { to, data } => {
                self.traffic.sent(Way::Udp, data);
                if !self.batch.fits(data, to) {
                    self.flush_udp();
                }
                self.batch.push(data, to);
            }
            Emit::Tunnel(data) => {
                if let Err(err) = device.try_send(data) {
                    self.device_write_failed += 1;
                    if self.device_write_failed.is_power_of_two() {
                        warn!(error = %err, failures = self.device_write_failed, "device write failed");
                    }
                }
            }
        }
    }

    fn flush<D: Device>(&mut self, device: &D) {
        self.flush_udp();
        if let Err(err) = device.flush() {
            self.device_write_failed += 1;
            if self.device_write_failed.is_power_of_two() {
                warn!(error = %err, failures = self.device_write_failed, "device write failed");
            }
        }
    }

    fn flush_udp(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let failed = udp_batch::flush(self.fd, &mut self.batch, &mut self.gso) as u64;
        if failed > 0 {
            let before = self.udp_send_failed;
            self.udp_send_failed += failed;
            if before.leading_zeros() != self.udp_send_failed.leading_zeros() {
                warn!(failures = self.udp_send_failed, "UDP sends failed");
            }
        }
    }
}
