//! STUN probing from the WireGuard socket ("netcheck", issue #8): binding requests to the
//! STUN servers of the DERP map, sent from the socket WireGuard and disco use, so the
//! mapped address a server reports is the one a peer can reach us at behind a NAT. Each
//! round probes every server once; its answers give our public endpoints and each region's
//! round-trip time (`derp_latency`, `preferred_derp_latency`).
//!
//! Sans-IO: the runner passes the time in, sends what [`Netcheck::handle_timeout`] emits and
//! feeds STUN datagrams to [`Netcheck::handle_response`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tracing::{debug, trace};

use super::stun::{self, TxId};
use super::udp_batch::canonical;

/// How often a round runs while nothing changes (upstream re-STUNs every 20–26 s).
pub const ROUND_INTERVAL: Duration = Duration::from_secs(23);
/// How long a round waits for its answers.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(3);
/// Requests resent to servers that have not answered, this long into a round (UDP loses).
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

/// A STUN server of a DERP region, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StunServer {
    pub region: i64,
    pub addr: SocketAddr,
}

/// What the last round with answers found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StunReport {
    /// Our addresses as the STUN servers saw them, sorted, no duplicates.
    pub endpoints: Vec<SocketAddr>,
    /// Per region that answered, the lowest round-trip time, by region id.
    pub latency: Vec<(i64, Duration)>,
    /// The same over IPv4 and over IPv6 STUN servers only (`derp_latency`'s `-v4`/`-v6`).
    pub latency_v4: Vec<(i64, Duration)>,
    pub latency_v6: Vec<(i64, Duration)>,
}

/// Requests and responses, for the data plane's stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetcheckStats {
    pub requests_sent: u64,
    pub responses: u64,
    /// STUN datagrams that were not an answer to a request in flight (late, forged,
    /// from elsewhere) or did not parse.
    pub ignored: u64,
    /// Rounds that ended without a single answer.
    pub silent_rounds: u64,
}

#[derive(Debug)]
struct InFlight {
    server: StunServer,
    sent: Instant,
}

#[derive(Debug)]
struct Round {
    started: Instant,
    retried: bool,
    answered: BTreeSet<StunServer>,
    endpoints: BTreeSet<SocketAddr>,
    /// (region, over IPv6) → lowest round trip.
    latency: BTreeMap<(i64, bool), Duration>,
}

/// The STUN prober of one UDP socket.
#[derive(Debug)]
pub struct Netcheck {
    servers: Vec<StunServer>,
    interval: Duration,
    next_round: Option<Instant>,
    round: Option<Round>,
    in_flight: HashMap<TxId, InFlight>,
    report: StunReport,
    stats: NetcheckStats,
}

impl Default for Netcheck {
    fn default() -> Self {
        Self::new(ROUND_INTERVAL)
    }
}

impl Netcheck {
    pub fn new(interval: Duration) -> Self {
        Self {
            servers: Vec::new(),
            interval,
            next_round: None,
            round: None,
            in_flight: HashMap::new(),
            report: StunReport::default(),
            stats: NetcheckStats::default(),
        }
    }

    /// Replaces the servers to probe; a changed list starts a round now.
    pub fn set_servers(&mut self, now: Instant, mut servers: Vec<StunServer>) {
        servers.sort();
        servers.dedup();
        if servers == self.servers {
            return;
        }
        debug!(servers = ?servers, "STUN servers");
        self.servers = servers;
        self.restun(now);
    }

    /// Starts a round now (wake, rebind, new addresses). What earlier rounds found is kept
    /// until this one has answers.
    pub fn restun(&mut self, now: Instant) {
        self.round = None;
        self.in_flight.clear();
        self.next_round = (!self.servers.is_empty()).then_some(now);
    }

    /// When [`Netcheck::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.round {
            Some(r) if !r.retried => Some(r.started + RETRY_AFTER),
            Some(r) => Some(r.started + ROUND_TIMEOUT),
            None => self.next_round,
        }
    }

    /// Starts, retries or ends a round when due; `send` gets each request to send.
    /// Returns whether the report changed.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        send: &mut impl FnMut(SocketAddr, Vec<u8>),
    ) -> bool {
        let Some(round) = &mut self.round else {
            if self.next_round.is_some_and(|t| t <= now) {
                self.start_round(now, send);
            }
            return false;
        };
        if !round.retried && now >= round.started + RETRY_AFTER {
            round.retried = true;
            let unanswered: Vec<StunServer> = self
                .servers
                .iter()
                .filter(|s| !round.answered.contains(s))
                .copied()
                .collect();
            for server in unanswered {
                self.request(now, server, send);
            }
        }
        match &self.round {
            Some(r) if now >= r.started + ROUND_TIMEOUT => self.end_round(now),
            _ => false,
        }
    }

    /// A STUN datagram from `from`. Returns whether the report changed (the round ended
    /// because every server answered).
    pub fn handle_response(&mut self, now: Instant, from: SocketAddr, packet: &[u8]) -> bool {
        let (tx_id, mapped) = match stun::parse_response(packet) {
            Ok(r) => r,
            Err(e) => {
                self.stats.ignored += 1;
                trace!(%from, error = %e, "STUN datagram ignored");
                return false;
            }
        };
        let Some(sent) = self.in_flight.remove(&tx_id) else {
            self.stats.ignored += 1;
            trace!(%from, "STUN response to no request in flight ignored");
            return false;
        };
        if !same_addr(sent.server.addr, from) {
            self.stats.ignored += 1;
            self.in_flight.insert(tx_id, sent);
            trace!(%from, "STUN response from another address than asked ignored");
            return false;
        }
        let Some(round) = &mut self.round else {
            return false;
        };
        self.stats.responses += 1;
        let rtt = now.saturating_duration_since(sent.sent);
        trace!(server = %sent.server.addr, %mapped, ?rtt, "STUN answer");
        round.answered.insert(sent.server);
        round.endpoints.insert(canonical(mapped));
        let v6 = canonical(sent.server.addr).is_ipv6();
        let best = round.latency.entry((sent.server.region, v6)).or_insert(rtt);
        *best = (*best).min(rtt);
        if round.answered.len() == self.servers.len() {
            return self.end_round(now);
        }
        false
    }

    pub fn report(&self) -> &StunReport {
        &self.report
    }

    pub fn stats(&self) -> NetcheckStats {
        self.stats
    }

    fn start_round(&mut self, now: Instant, send: &mut impl FnMut(SocketAddr, Vec<u8>)) {
        self.next_round = None;
        self.in_flight.clear();
        self.round = Some(Round {
            started: now,
            retried: false,
            answered: BTreeSet::new(),
            endpoints: BTreeSet::new(),
            latency: BTreeMap::new(),
        });
        for server in self.servers.clone() {
            self.request(now, server, send);
        }
    }

    fn request(
        &mut self,
        now: Instant,
        server: StunServer,
        send: &mut impl FnMut(SocketAddr, Vec<u8>),
    ) {
        let mut tx_id = [0u8; 12];
        OsRng.fill_bytes(&mut tx_id);
        self.in_flight.insert(tx_id, InFlight { server, sent: now });
        self.stats.requests_sent += 1;
        send(server.addr, stun::binding_request(tx_id));
    }

    /// Ends the round: a round with answers becomes the report; a silent one keeps the
    /// last report (a lost round must not withdraw our endpoints).
    fn end_round(&mut self, now: Instant) -> bool {
        self.in_flight.clear();
        self.next_round = Some(now + self.interval);
        let Some(round) = self.round.take() else {
            return false;
        };
        if round.answered.is_empty() {
            self.stats.silent_rounds += 1;
            debug!("no STUN server answered this round");
            return false;
        }
        let family = |v6: bool| -> Vec<(i64, Duration)> {
            let of = round.latency.iter().filter(|((_, f), _)| *f == v6);
            of.map(|((r, _), d)| (*r, *d)).collect()
        };
        let (latency_v4, latency_v6) = (family(false), family(true));
        let mut latency: BTreeMap<i64, Duration> = BTreeMap::new();
        for ((r, _), d) in &round.latency {
            let best = latency.entry(*r).or_insert(*d);
            *best = (*best).min(*d);
        }
        let report = StunReport {
            endpoints: round.endpoints.into_iter().collect(),
            latency: latency.into_iter().collect(),
            latency_v4,
            latency_v6,
        };
        let changed = report != self.report;
        if report.endpoints != self.report.endpoints {
            debug!(endpoints = ?report.endpoints, "STUN: our public endpoints");
        }
        self.report = report;
        changed
    }
}

fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    canonical(a) == canonical(b)
}

#[cfg(test)]
#[path = "netcheck_tests.rs"]
mod tests;
