//! What the session publishes about its network position: the STUN servers the data plane
//! probes (from the DERP map), and our endpoints and per-region latencies from the local
//! interfaces plus the data plane's [`NetReport`] (tailnet.md §5, §11; issue #8).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use codervpn_proto::tailnet::DerpMap;
use tracing::{debug, warn};

use crate::net::endpoints::{local_endpoints, usable};
use crate::net::netcheck::StunServer;
use crate::net::runner::NetReport;
use crate::session::node::derp_latency_key;

/// A node's STUN port when the map says 0.
pub const DEFAULT_STUN_PORT: u16 = 3478;
/// STUN nodes probed per region (the first ones in map order).
const NODES_PER_REGION: usize = 2;
/// How long resolving one STUN host name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The STUN servers of `map`: per region the first nodes with STUN (`STUNPort` not -1;
/// 0 means 3478), each at its `IPv4`/`IPv6` literals, else at the first IPv4 and IPv6
/// addresses its `HostName` resolves to (`none` or any non-address disables a family
/// given in the node). Avoided regions are left out. Unresolvable nodes are skipped.
pub async fn stun_servers(map: &DerpMap) -> Vec<StunServer> {
    let mut out = Vec::new();
    for region in map.regions.values().filter(|r| !r.avoid) {
        let nodes = region.nodes.iter().filter(|n| n.stun_port >= 0);
        for node in nodes.take(NODES_PER_REGION) {
            let port = match u16::try_from(node.stun_port) {
                Ok(0) => DEFAULT_STUN_PORT,
                Ok(p) => p,
                Err(_) => continue,
            };
            let mut addrs: Vec<IpAddr> = [&node.ipv4, &node.ipv6]
                .into_iter()
                .filter_map(|s| s.parse().ok())
                .collect();
            let literal_given = !node.ipv4.is_empty() || !node.ipv6.is_empty();
            if addrs.is_empty() && !literal_given && !node.host_name.is_empty() {
                addrs = resolve(&node.host_name, port).await;
            }
            out.extend(addrs.into_iter().map(|ip| StunServer {
                region: region.region_id,
                addr: SocketAddr::new(ip, port),
            }));
        }
    }
    out
}

/// The first IPv4 and first IPv6 address of `host`.
async fn resolve(host: &str, port: u16) -> Vec<IpAddr> {
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    let addrs: Vec<IpAddr> = match found {
        Ok(Ok(it)) => it.map(|a| a.ip()).collect(),
        Ok(Err(e)) => {
            warn!(host, error = %e, "cannot resolve a STUN server");
            return Vec::new();
        }
        Err(_) => {
            warn!(host, "resolving a STUN server timed out");
            return Vec::new();
        }
    };
    let v4 = addrs.iter().find(|a| a.is_ipv4()).copied();
    let v6 = addrs.iter().find(|a| a.is_ipv6()).copied();
    v4.into_iter().chain(v6).collect()
}

/// Our endpoints: every usable interface address with the data plane's port, then the
/// STUN-mapped ones (by the same rule: no loopback unless `loopback`); sorted, no
/// duplicates. `None` when the interfaces cannot be listed.
pub fn our_endpoints(net: &NetReport, loopback: bool) -> Option<Vec<SocketAddr>> {
    let mut eps = match local_endpoints(net.port, loopback) {
        Ok(eps) => eps,
        Err(e) => {
            warn!(error = %e, "cannot list the interface addresses");
            return None;
        }
    };
    let mapped = net.stun.endpoints.iter().copied();
    eps.extend(mapped.filter(|e| usable(e.ip()) || (loopback && e.ip().is_loopback())));
    eps.sort();
    eps.dedup();
    Some(eps)
}

/// Per region, the latency we publish: STUN's round-trip where a STUN server of the
/// region answered (per address family, as `derp_latency` keys it), else the DERP connect
/// time measured when joining (published as `-v4`).
#[derive(Debug, Clone, Default)]
pub struct RegionLatencies {
    measured: BTreeMap<i64, Duration>,
    /// (region, over IPv6) → STUN round trip.
    by_family: BTreeMap<(i64, bool), Duration>,
}

impl RegionLatencies {
    pub fn new(measured: impl IntoIterator<Item = (i64, Duration)>) -> Self {
        Self {
            measured: measured.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Takes the latest STUN round; returns whether a published value changed.
    pub fn update(&mut self, net: &NetReport) -> bool {
        let v4 = net.stun.latency_v4.iter().map(|(r, d)| ((*r, false), *d));
        let v6 = net.stun.latency_v6.iter().map(|(r, d)| ((*r, true), *d));
        let by_family: BTreeMap<(i64, bool), Duration> = v4.chain(v6).collect();
        let changed = by_family != self.by_family;
        if changed {
            debug!(?by_family, "STUN latencies");
        }
        self.by_family = by_family;
        changed
    }

    /// A region's STUN latency, the lower family's when STUN answered over both.
    fn stun(&self, region: i64) -> Option<Duration> {
        let family = |v6| self.by_family.get(&(region, v6)).copied();
        match (family(false), family(true)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A region's latency (the lower family's when STUN answered over both).
    pub fn get(&self, region: i64) -> Option<Duration> {
        self.stun(region)
            .or_else(|| self.measured.get(&region).copied())
    }

    /// `(key, seconds)` for `Node.derp_latency`: every family STUN measured, and the
    /// join-time figure as `-v4` for regions STUN did not reach.
    pub fn published(&self) -> Vec<(String, f64)> {
        let stun = self
            .by_family
            .iter()
            .map(|((r, v6), d)| (derp_latency_key(*r, *v6), d.as_secs_f64()));
        let measured = self
            .measured
            .iter()
            .filter(|(r, _)| self.stun(**r).is_none())
            .map(|(r, d)| (derp_latency_key(*r, false), d.as_secs_f64()));
        let mut out: Vec<(String, f64)> = stun.chain(measured).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// How long a STUN round's latencies count towards a region's best (upstream: 5 min).
pub const HOME_HISTORY: Duration = Duration::from_secs(5 * 60);
/// A better region must beat the home by at least this much (`preferredDERPAbsoluteDiff`).
pub const HOME_ABSOLUTE_DIFF: Duration = Duration::from_millis(10);

/// The DERP map's `HomeParams.RegionScore` (region → latency multiplier), if it has one.
pub fn region_scores(map: &DerpMap) -> Option<&HashMap<i64, f64>> {
    map.home_params.as_ref().map(|h| &h.region_score)
}

/// `d` multiplied by `region`'s score when that is a positive finite number (upstream
/// ignores scores ≤ 0; a non-finite one would make the multiplication panic, and a score
/// above 10⁶ is taken as 10⁶), otherwise `d` as it is.
pub fn scored(scores: Option<&HashMap<i64, f64>>, region: i64, d: Duration) -> Duration {
    match scores.and_then(|s| s.get(&region)) {
        Some(&score) if score > 0.0 && score.is_finite() => d.mul_f64(score.min(1e6)),
        _ => d,
    }
}

/// Chooses the home DERP region from STUN rounds the way upstream's netcheck does
/// (`addReportHistoryAndSetPreferredDERP`, tailscale `net/netcheck/netcheck.go`): the
/// candidate is the region of the latest round with the best latency over the last five
/// minutes; the current home is kept while it still answers and the candidate is not
/// clearly better — by less than 10 ms, or by less than a third of the home's latency in
/// this round. A home that did not answer STUN this round is kept too (it may have no
/// STUN node; its DERP connection is what carries traffic). Every latency compared is first
/// multiplied by the region's `HomeParams.RegionScore` from the DERP map when that is
/// positive (so a server can steer clients away from a region); the history keeps raw
/// figures, as upstream does, so a changed score applies at once. Sans-IO.
#[derive(Debug)]
pub struct HomeChooser {
    history: Duration,
    rounds: VecDeque<(Instant, BTreeMap<i64, Duration>)>,
}

impl Default for HomeChooser {
    fn default() -> Self {
        Self::new(HOME_HISTORY)
    }
}

impl HomeChooser {
    /// Rounds count towards a region's best for `history` ([`HOME_HISTORY`] normally).
    pub fn new(history: Duration) -> Self {
        Self {
            history,
            rounds: VecDeque::new(),
        }
    }

    /// Adds a round's latencies (regions `usable` accepts only) and returns the home to use;
    /// `scores` is the DERP map's `HomeParams.RegionScore` ([`region_scores`]).
    pub fn choose(
        &mut self,
        now: Instant,
        current: i64,
        latest: &[(i64, Duration)],
        usable: impl Fn(i64) -> bool,
        scores: Option<&HashMap<i64, f64>>,
    ) -> i64 {
        let scaled = |r: i64, d: Duration| scored(scores, r, d);
        let latest: BTreeMap<i64, Duration> =
            latest.iter().copied().filter(|(r, _)| usable(*r)).collect();
        while self
            .rounds
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.history)
        {
            self.rounds.pop_front();
        }
        self.rounds.push_back((now, latest.clone()));
        let mut best_recent: BTreeMap<i64, Duration> = BTreeMap::new();
        for (r, d) in self.rounds.iter().flat_map(|(_, l)| l.iter()) {
            let best = best_recent.entry(*r).or_insert(*d);
            *best = (*best).min(*d);
        }
        for (r, d) in best_recent.iter_mut() {
            *d = scaled(*r, *d);
        }
        let Some((candidate, best)) = latest
            .keys()
            .filter_map(|r| Some((*r, *best_recent.get(r)?)))
            .min_by_key(|(r, d)| (*d, *r))
        else {
            return current;
        };
        if candidate == current {
            return current;
        }
        let Some(old) = latest.get(&current).map(|d| scaled(current, *d)) else {
            return current;
        };
        let keep = old.saturating_sub(best) < HOME_ABSOLUTE_DIFF || best > old / 3 * 2;
        if keep { current } else { candidate }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codervpn_proto::tailnet::derp_map::{Region, region::Node};

    fn node(host: &str, ipv4: &str, stun_port: i32, stun_only: bool) -> Node {
        Node {
            name: host.into(),
            host_name: host.into(),
            ipv4: ipv4.into(),
            stun_port,
            stun_only,
            ..Default::default()
        }
    }

    fn map(regions: Vec<(i64, bool, Vec<Node>)>) -> DerpMap {
        DerpMap {
            regions: regions
                .into_iter()
                .map(|(id, avoid, nodes)| {
                    let r = Region {
                        region_id: id,
                        avoid,
                        nodes,
                        ..Default::default()
                    };
                    (id, r)
                })
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn stun_nodes_give_servers_with_port_3478_for_zero_and_none_for_minus_one() {
        let m = map(vec![
            (
                1,
                false,
                vec![
                    node("relay", "192.0.2.1", -1, false),
                    node("stun", "192.0.2.2", 0, true),
                    node("stun2", "192.0.2.3", 19302, true),
                    node("stun3", "192.0.2.4", 1, true),
                ],
            ),
            (2, true, vec![node("avoided", "192.0.2.9", 0, true)]),
            (3, false, vec![node("localhost", "", 3479, true)]),
            (4, false, vec![node("no-v4", "none", 0, true)]),
        ]);
        let servers = stun_servers(&m).await;
        let got: Vec<(i64, SocketAddr)> = servers.iter().map(|s| (s.region, s.addr)).collect();
        assert!(got.contains(&(1, "192.0.2.2:3478".parse().unwrap())));
        assert!(got.contains(&(1, "192.0.2.3:19302".parse().unwrap())));
        assert!(
            !got.iter().any(|(_, a)| a.ip().to_string() == "192.0.2.1"),
            "STUNPort -1"
        );
        assert!(
            !got.iter().any(|(_, a)| a.ip().to_string() == "192.0.2.4"),
            "two nodes per region"
        );
        assert!(!got.iter().any(|(r, _)| *r == 2), "avoided region");
        assert!(
            got.iter()
                .any(|(r, a)| *r == 3 && a.port() == 3479 && a.ip().is_loopback())
        );
        assert!(
            !got.iter().any(|(r, _)| *r == 4),
            "`none` and no other literal"
        );
    }

    #[test]
    fn stun_latency_replaces_the_measured_one_for_its_region_only() {
        let mut l = RegionLatencies::new([(1, ms(30)), (2, ms(50))]);
        let net = NetReport {
            port: 1,
            stun: crate::net::netcheck::StunReport {
                endpoints: vec![],
                latency: vec![(1, ms(10)), (3, ms(70))],
                latency_v4: vec![(1, ms(10))],
                latency_v6: vec![(1, ms(12)), (3, ms(70))],
            },
        };
        assert!(l.update(&net));
        assert!(!l.update(&net), "same round values: no change");
        assert_eq!(l.get(1), Some(ms(10)));
        assert_eq!(l.get(2), Some(ms(50)));
        let keys: Vec<(String, f64)> = vec![
            ("1-v4".into(), 0.01),
            ("1-v6".into(), 0.012),
            ("2-v4".into(), 0.05),
            ("3-v6".into(), 0.07),
        ];
        assert_eq!(l.published(), keys);
    }

    #[test]
    fn stun_endpoints_join_the_interface_endpoints() {
        let net = NetReport {
            port: 4242,
            stun: crate::net::netcheck::StunReport {
                endpoints: vec!["198.51.100.7:61000".parse().unwrap()],
                ..Default::default()
            },
        };
        let eps = our_endpoints(&net, false).unwrap();
        assert!(eps.contains(&"198.51.100.7:61000".parse().unwrap()));
        assert!(
            eps.iter()
                .filter(|e| e.port() == 4242)
                .all(|e| !e.ip().is_loopback())
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn home_moves_only_to_a_region_clearly_better_by_10ms_and_a_third() {
        let t0 = Instant::now();
        let once = |home: u64, other: u64| {
            HomeChooser::default().choose(t0, 1, &[(1, ms(home)), (2, ms(other))], |_| true, None)
        };
        assert_eq!(once(30, 25), 1, "5 ms better: stay");
        assert_eq!(once(60, 45), 1, "15 ms better but not by a third: stay");
        assert_eq!(
            once(15, 6),
            1,
            "better by more than a third but under 10 ms: stay"
        );
        assert_eq!(once(60, 20), 2, "40 ms and two thirds better: move");
        assert_eq!(once(30, 19), 2, "11 ms and just over a third better: move");
    }

    #[test]
    fn a_home_that_did_not_answer_or_an_empty_round_keeps_the_home() {
        let t0 = Instant::now();
        let mut c = HomeChooser::default();
        assert_eq!(c.choose(t0, 1, &[(2, ms(5))], |_| true, None), 1);
        assert_eq!(c.choose(t0, 1, &[], |_| true, None), 1);
    }

    #[test]
    fn regions_not_usable_are_never_chosen() {
        let t0 = Instant::now();
        let mut c = HomeChooser::default();
        let got = c.choose(
            t0,
            1,
            &[(1, ms(100)), (2, ms(5)), (3, ms(10))],
            |r| r != 2,
            None,
        );
        assert_eq!(got, 3);
    }

    #[test]
    fn a_candidate_is_judged_by_its_best_latency_of_the_last_five_minutes() {
        let t0 = Instant::now();
        let mut c = HomeChooser::default();
        // Region 2 was fast a minute ago and is slow now: its best recent figure counts.
        c.choose(t0, 1, &[(1, ms(80)), (2, ms(10))], |_| true, None);
        let t1 = t0 + Duration::from_secs(60);
        let got = c.choose(t1, 2, &[(1, ms(80)), (2, ms(90))], |_| true, None);
        assert_eq!(got, 2, "home 2 is kept: its 10 ms best is still the best");
        // Six minutes on, the old round is forgotten and region 1 wins clearly.
        let t2 = t0 + Duration::from_secs(6 * 60);
        assert_eq!(
            c.choose(t2, 2, &[(1, ms(20)), (2, ms(90))], |_| true, None),
            1
        );
    }

    #[test]
    fn region_scores_scale_latencies_before_comparing() {
        let t0 = Instant::now();
        let round = [(1, ms(30)), (2, ms(12))];
        // Unscored: 18 ms and more than a third better, so region 2 wins.
        assert_eq!(
            HomeChooser::default().choose(t0, 1, &round, |_| true, None),
            2
        );
        // Region 2 scored ×3 (36 ms) loses to the home's 30 ms.
        let penalised = HashMap::from([(2, 3.0)]);
        assert_eq!(
            HomeChooser::default().choose(t0, 1, &round, |_| true, Some(&penalised)),
            1
        );
        // Region 1 scored ×0.5 (15 ms) is within 10 ms of region 2's 12 ms: stay.
        let favoured = HashMap::from([(1, 0.5)]);
        assert_eq!(
            HomeChooser::default().choose(t0, 1, &round, |_| true, Some(&favoured)),
            1
        );
        // Zero, negative, NaN and infinite scores are ignored, as upstream ignores ≤ 0.
        for bad in [0.0, -2.0, f64::NAN, f64::INFINITY] {
            let scores = HashMap::from([(2, bad)]);
            assert_eq!(
                HomeChooser::default().choose(t0, 1, &round, |_| true, Some(&scores)),
                2,
                "score {bad}"
            );
        }
    }
}
