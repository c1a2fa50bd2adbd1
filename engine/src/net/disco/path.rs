//! Per-peer path selection (coder/tailscale `wgengine/magicsock/endpoint.go`). Sans-IO: the
//! caller feeds endpoints, pings, pongs and the time; it polls transmits (disco messages to
//! seal and send), path changes and the next deadline.
//!
//! The rules, after upstream:
//! - candidates are the peer node's `endpoints`, the endpoints of its last call-me-maybe, and
//!   the source addresses of pings it sent us over UDP;
//! - a full round pings every candidate not pinged in the last [`PathConfig::ping_interval`]
//!   and asks the peer, through DERP, to ping us back (call-me-maybe); it runs while no direct
//!   path is trusted, and every [`PathConfig::upgrade_interval`] while the best path is slower
//!   than [`PathConfig::good_enough_latency`];
//! - a pong confirms the endpoint its ping was sent to, with the round-trip time as latency;
//!   the best confirmed endpoint (lowest latency, with upstream's `betterAddr` preferences) is
//!   trusted for [`PathConfig::trust_udp_addr`] after its last pong;
//! - every [`PathConfig::heartbeat_interval`] the best endpoint is pinged again, so a live
//!   path stays trusted and a dead one falls back to DERP when the trust runs out.
//!
//! One deliberate difference: upstream keeps a lower-latency best address even after its trust
//! ran out, so a slower endpoint that still answers cannot take over; here an untrusted best
//! address is replaced by any endpoint that answers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tracing::{debug, trace};

use super::codec::{Ping, Pong, TxId};
pub use crate::net::path::Via;

/// Timing and policy. The defaults are upstream's (`magicsock.go`).
#[derive(Clone, Debug)]
pub struct PathConfig {
    /// Minimum time between discovery pings to one endpoint (`discoPingInterval`, 5 s).
    pub ping_interval: Duration,
    /// How long a ping waits for its pong (`pingTimeoutDuration`, 5 s).
    pub ping_timeout: Duration,
    /// How long a direct path is used after its last pong (`trustUDPAddrDuration`, 6.5 s).
    pub trust_udp_addr: Duration,
    /// How often the best endpoint is pinged (`heartbeatInterval`, 3 s).
    pub heartbeat_interval: Duration,
    /// How often a working but slow direct path looks for a better one (`upgradeInterval`).
    pub upgrade_interval: Duration,
    /// Latency at or under which no better path is looked for (`goodEnoughLatency`, 5 ms).
    pub good_enough_latency: Duration,
    /// `disable_direct_connections`: no candidates, no pings over UDP, always DERP.
    pub disable_direct: bool,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(5),
            trust_udp_addr: Duration::from_millis(6500),
            heartbeat_interval: Duration::from_secs(3),
            upgrade_interval: Duration::from_secs(60),
            good_enough_latency: Duration::from_millis(5),
            disable_direct: false,
        }
    }
}

/// The path WireGuard packets to the peer should take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// A confirmed direct UDP endpoint and its last measured round-trip time.
    Direct { addr: SocketAddr, latency: Duration },
    /// The DERP relay.
    Derp,
}

impl Path {
    /// Whether two paths go the same way (the same direct endpoint, or both DERP), whatever
    /// their latencies.
    pub fn same_route(self, other: Path) -> bool {
        match (self, other) {
            (Path::Direct { addr: x, .. }, Path::Direct { addr: y, .. }) => x == y,
            (Path::Derp, Path::Derp) => true,
            _ => false,
        }
    }
}

/// A disco message the caller should seal to the peer's disco key and send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// A ping with our node key; discovery pings always go over UDP.
    Ping { to: SocketAddr, tx_id: TxId },
    /// A pong to a ping, back the way the ping came; `src` is where the ping came from
    /// over UDP, `None` through DERP (the caller names the relay, as upstream does with its
    /// DERP magic address).
    Pong {
        to: Via,
        tx_id: TxId,
        src: Option<SocketAddr>,
    },
    /// A call-me-maybe through DERP, carrying our current endpoints (the caller knows them).
    CallMeMaybe,
}

/// Counters, for the caller's metrics and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathStats {
    pub pings_sent: u64,
    pub pings_received: u64,
    pub pongs_received: u64,
    /// Pongs whose transaction id matches no ping in flight (late, duplicated or forged).
    pub unknown_pongs: u64,
    pub ping_timeouts: u64,
    pub call_me_maybes_received: u64,
}

/// Upper bound on candidates; endpoints learned from pings beyond it are not added.
const MAX_CANDIDATES: usize = 100;

/// The path state of one peer.
#[derive(Debug)]
pub struct PeerPaths {
    config: PathConfig,
    candidates: BTreeMap<SocketAddr, Candidate>,
    in_flight: HashMap<TxId, SentPing>,
    best: Option<Best>,
    trust_until: Option<Instant>,
    last_full_ping: Option<Instant>,
    next_heartbeat: Option<Instant>,
    transmits: VecDeque<Transmit>,
    reported: Path,
    path_change: Option<Path>,
    stats: PathStats,
}

impl PeerPaths {
    /// A peer with no candidates: its path is DERP.
    pub fn new(config: PathConfig) -> Self {
        Self {
            config,
            candidates: BTreeMap::new(),
            in_flight: HashMap::new(),
            best: None,
            trust_until: None,
            last_full_ping: None,
            next_heartbeat: None,
            transmits: VecDeque::new(),
            reported: Path::Derp,
            path_change: None,
            stats: PathStats::default(),
        }
    }

    /// The peer node's `endpoints` changed (replaces the previous node list).
    pub fn set_node_endpoints(&mut self, now: Instant, endpoints: &[SocketAddr]) {
        if self.config.disable_direct {
            return;
        }
        for c in self.candidates.values_mut() {
            c.from_node = false;
        }
        for ep in endpoints {
            self.candidates.entry(*ep).or_default().from_node = true;
        }
        self.prune();
        self.run(now, true);
    }

    /// A call-me-maybe arrived (through DERP): its endpoints replace the previous ones, every
    /// candidate may be pinged again at once, and a round of pings goes out.
    pub fn handle_call_me_maybe(&mut self, now: Instant, endpoints: &[SocketAddr]) {
        self.stats.call_me_maybes_received += 1;
        if self.config.disable_direct {
            return;
        }
        for c in self.candidates.values_mut() {
            c.from_call_me_maybe = false;
        }
        for ep in endpoints
            .iter()
            .filter(|ep| !ignored_call_me_maybe_endpoint(ep))
        {
            self.candidates.entry(*ep).or_default().from_call_me_maybe = true;
        }
        self.prune();
        for c in self.candidates.values_mut() {
            c.last_ping = None;
        }
        self.full_ping(now, false);
        self.note_path(now);
    }

    /// A ping arrived: answer it the way it came; a UDP source becomes a candidate and is
    /// pinged back if a round of pings is wanted.
    pub fn handle_ping(&mut self, now: Instant, from: Via, ping: &Ping) {
        self.stats.pings_received += 1;
        let src = match from {
            Via::Udp(addr) => {
                let room = self.candidates.len() < MAX_CANDIDATES;
                if !self.config.disable_direct && (room || self.candidates.contains_key(&addr)) {
                    self.candidates.entry(addr).or_default().from_ping = true;
                }
                Some(addr)
            }
            Via::Derp(_) => None,
        };
        self.transmits.push_back(Transmit::Pong {
            to: from,
            tx_id: ping.tx_id,
            src,
        });
        // The peer is already pinging us: no call-me-maybe needed.
        self.run(now, false);
    }

    /// A pong arrived. Returns whether it answered a ping in flight; other pongs (late,
    /// duplicated or forged) change nothing and are counted in [`PathStats::unknown_pongs`].
    pub fn handle_pong(&mut self, now: Instant, from: Via, pong: &Pong) -> bool {
        let Some(sent) = self.in_flight.remove(&pong.tx_id) else {
            self.stats.unknown_pongs += 1;
            trace!(?from, "disco: pong with unknown tx id ignored");
            return false;
        };
        self.stats.pongs_received += 1;
        let latency = now.saturating_duration_since(sent.at);
        match from {
            Via::Udp(_) => self.confirm(now, sent.to, latency),
            // Pings go over UDP only; a pong relayed by DERP says nothing about the UDP path.
            Via::Derp(_) => {}
        }
        self.note_path(now);
        true
    }

    /// The network changed (new interface, wake, rebind): trust no direct path until it
    /// answers again, and ping every candidate now.
    pub fn network_changed(&mut self, now: Instant) {
        self.trust_until = None;
        self.last_full_ping = None;
        for c in self.candidates.values_mut() {
            c.last_ping = None;
        }
        self.run(now, true);
    }

    /// Time passed: expire pings, send heartbeats and rounds of pings as they fall due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.config.ping_timeout;
        let before = self.in_flight.len();
        self.in_flight
            .retain(|_, sent| now.saturating_duration_since(sent.at) < timeout);
        self.stats.ping_timeouts += (before - self.in_flight.len()) as u64;
        if self.trust_until.is_some_and(|until| now >= until) {
            self.trust_until = None; // expired: the path falls back to DERP
        }
        if self.next_heartbeat.is_some_and(|t| now >= t) {
            self.heartbeat(now);
        }
        self.run(now, true);
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiries = self
            .in_flight
            .values()
            .map(|s| s.at + self.config.ping_timeout);
        let trust = self.trust_until.filter(|_| self.best.is_some());
        let pings = self.next_ping_due();
        expiries
            .chain(trust)
            .chain(self.next_heartbeat)
            .chain(pings)
            .min()
    }

    /// The next disco message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The new path, once after each change of [`best_path`](Self::best_path).
    pub fn poll_path_change(&mut self) -> Option<Path> {
        self.path_change.take()
    }

    /// The path to use at `now`.
    pub fn best_path(&self, now: Instant) -> Path {
        match (self.best, self.trust_until) {
            (Some(best), Some(until)) if !self.config.disable_direct && now < until => {
                Path::Direct {
                    addr: best.addr,
                    latency: best.latency,
                }
            }
            _ => Path::Derp,
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> PathStats {
        self.stats
    }

    /// The current candidate endpoints, in address order.
    pub fn candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.candidates.keys().copied()
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Candidate {
    from_node: bool,
    from_call_me_maybe: bool,
    from_ping: bool,
    last_ping: Option<Instant>,
}

impl Candidate {
    fn wanted(&self) -> bool {
        self.from_node || self.from_call_me_maybe || self.from_ping
    }
}

#[derive(Clone, Copy, Debug)]
struct SentPing {
    to: SocketAddr,
    at: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Best {
    addr: SocketAddr,
    latency: Duration,
}

impl PeerPaths {
    /// Starts a round of pings if one is wanted, keeps the heartbeat going and reports a path
    /// change.
    fn run(&mut self, now: Instant, with_call_me_maybe: bool) {
        if !self.config.disable_direct && !self.candidates.is_empty() {
            if self.want_full_ping(now) {
                self.full_ping(now, with_call_me_maybe);
            }
            if self.next_heartbeat.is_none() {
                self.next_heartbeat = Some(now + self.config.heartbeat_interval);
            }
        }
        self.note_path(now);
    }

    /// `wantFullPingLocked`.
    fn want_full_ping(&self, now: Instant) -> bool {
        let (Some(best), Some(last_full)) = (self.best, self.last_full_ping) else {
            return true;
        };
        if self.trust_until.is_none_or(|until| now >= until) {
            return true;
        }
        best.latency > self.config.good_enough_latency
            && now.saturating_duration_since(last_full) >= self.config.upgrade_interval
    }

    /// `sendDiscoPingsLocked`: ping every candidate not pinged within the ping interval.
    fn full_ping(&mut self, now: Instant, with_call_me_maybe: bool) {
        let due: Vec<SocketAddr> = self
            .candidates
            .iter()
            .filter(|(_, c)| self.ping_due(c, now))
            .map(|(addr, _)| *addr)
            .collect();
        if due.is_empty() {
            return;
        }
        self.last_full_ping = Some(now);
        for addr in &due {
            self.send_ping(now, *addr);
        }
        debug!(candidates = due.len(), "disco: pinging candidate endpoints");
        if with_call_me_maybe {
            self.transmits.push_back(Transmit::CallMeMaybe);
        }
    }

    /// `heartbeat`: ping the best endpoint (trusted or not) every heartbeat interval.
    fn heartbeat(&mut self, now: Instant) {
        self.next_heartbeat = Some(now + self.config.heartbeat_interval);
        if self.config.disable_direct {
            return;
        }
        if let Some(best) = self.best {
            self.send_ping(now, best.addr);
        }
    }

    fn send_ping(&mut self, now: Instant, to: SocketAddr) {
        let mut tx_id = TxId::default();
        OsRng.fill_bytes(&mut tx_id);
        if let Some(c) = self.candidates.get_mut(&to) {
            c.last_ping = Some(now);
        }
        self.in_flight.insert(tx_id, SentPing { to, at: now });
        self.stats.pings_sent += 1;
        self.transmits.push_back(Transmit::Ping { to, tx_id });
    }

    /// A pong over UDP confirmed `addr` with `latency` (`handlePongConnLocked`).
    fn confirm(&mut self, now: Instant, addr: SocketAddr, latency: Duration) {
        if !self.candidates.contains_key(&addr) || self.config.disable_direct {
            return;
        }
        let this = Best { addr, latency };
        let trusted = self.trust_until.is_some_and(|until| now < until);
        let replace = match self.best {
            None => true,
            Some(best) if best.addr == addr => true,
            Some(_) if !trusted => true,
            Some(best) => better_addr(this, best),
        };
        if replace {
            if self.best.is_none_or(|b| b.addr != addr) {
                debug!(%addr, ?latency, "disco: new best endpoint");
            }
            self.best = Some(this);
            self.trust_until = Some(now + self.config.trust_udp_addr);
        }
    }

    fn note_path(&mut self, now: Instant) {
        let path = self.best_path(now);
        if path != self.reported {
            // A new latency on the same endpoint is news for the caller, not for the log:
            // with every agent pinged every few seconds it would be most of an idle
            // tunnel's log.
            if path.same_route(self.reported) {
                trace!(?path, "disco: path latency");
            } else {
                debug!(?path, "disco: path changed");
            }
            self.reported = path;
            self.path_change = Some(path);
        }
    }

    /// Drops candidates no source vouches for any more (and the best path if it was one).
    fn prune(&mut self) {
        self.candidates.retain(|_, c| c.wanted());
        if self
            .best
            .is_some_and(|b| !self.candidates.contains_key(&b.addr))
        {
            self.best = None;
            self.trust_until = None;
        }
    }

    fn ping_due(&self, c: &Candidate, now: Instant) -> bool {
        c.last_ping
            .is_none_or(|t| now.saturating_duration_since(t) >= self.config.ping_interval)
    }

    /// When the next round of pings falls due, if one is wanted and waits only for the
    /// per-endpoint ping interval.
    fn next_ping_due(&self) -> Option<Instant> {
        if self.config.disable_direct {
            return None;
        }
        if self.best.is_some() && self.trust_until.is_some() {
            return None; // the heartbeat decides when to look again
        }
        self.candidates
            .values()
            .map(|c| c.last_ping.map(|t| t + self.config.ping_interval))
            .min()
            .flatten()
    }
}

/// `betterAddr`: whether `a` should replace `b`. Latency counts as the percentage by which
/// one is faster; loopback (+50), private (+20) and IPv6 (+10) addresses get a bonus; an
/// improvement of 1 % or less does not switch.
fn better_addr(a: Best, b: Best) -> bool {
    if a.addr == b.addr {
        return false;
    }
    let (al, bl) = (a.latency.as_nanos(), b.latency.as_nanos());
    // Percent faster than the slower of the two (0 when that one took no time at all).
    let faster_by = |fast: u128, slow: u128| {
        (fast * 100)
            .checked_div(slow)
            .map_or(0, |pct| 100 - pct.min(100) as i64)
    };
    let (mut a_points, mut b_points) = if al > bl {
        (0, faster_by(bl, al))
    } else {
        (faster_by(al, bl), 0)
    };
    a_points += addr_bonus(a.addr.ip());
    b_points += addr_bonus(b.addr.ip());
    if a_points <= 1 && b_points == 0 {
        return false;
    }
    a_points > b_points
}

fn addr_bonus(ip: IpAddr) -> i64 {
    let place = if ip.is_loopback() {
        50
    } else if is_private(ip) {
        20
    } else {
        0
    };
    place + if ip.is_ipv6() { 10 } else { 0 }
}

/// Go's `netip.Addr.IsPrivate`: RFC 1918 and IPv6 unique local (fc00::/7).
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xfe00 == 0xfc00,
    }
}

/// `handleCallMeMaybe` skips IPv6 link-local endpoints and Coder's own range
/// (`fd60:627a:a42b::/48`, `tsaddr.IsCoderIP`).
fn ignored_call_me_maybe_endpoint(ep: &SocketAddr) -> bool {
    match ep.ip() {
        IpAddr::V4(_) => false,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let link_local = s[0] & 0xffc0 == 0xfe80;
            let coder = s[0] == 0xfd60 && s[1] == 0x627a && s[2] == 0xa42b;
            link_local || coder
        }
    }
}
