//! DERP regions for a session: measuring them to choose the home region, and connecting
//! to a region (home or a peer's) in the background, handing the connection to the data
//! plane once it is up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use codervpn_proto::tailnet::DerpMap;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::net::derp::{self, ClientInfo, ConnectOptions, DerpTransport, NodePrivateKey};
use crate::net::relay::{self, RelayIn};
use crate::net::runner::WgCommand;
use crate::session::api::derp_url;

use super::derp_headers::DerpHeaders;
use super::netinfo;

/// How long one region's latency probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A region's measured latency.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionLatency {
    pub region: i64,
    pub name: String,
    pub latency: Duration,
}

/// Measures every region that has a DERP node (TCP connect time to its first node, through
/// the environment's HTTP proxy if it names one, all regions at once) and returns them
/// fastest first, each latency weighed by the map's `HomeParams.RegionScore` for the order
/// (the latencies returned are as measured); unreachable regions are left out. Avoided
/// regions sort last.
pub async fn measure(map: &DerpMap) -> Vec<RegionLatency> {
    let probes = map.regions.values().filter_map(|r| {
        let node = r.nodes.iter().find(|n| !n.stun_only)?;
        let url = derp_url(node)?;
        let host = url.host_str()?.trim_matches(['[', ']']).to_owned();
        let port = url.port_or_known_default()?;
        let region = r.region_id;
        let name = r.region_name.clone();
        let avoid = r.avoid;
        Some(async move {
            let start = Instant::now();
            // Through the HTTP proxy when the environment names one for this relay: the
            // path the relay connection will take (proxy and CONNECT included).
            let connect = crate::transport::proxy::connect(url.scheme(), &host, port);
            let r = tokio::time::timeout(PROBE_TIMEOUT, connect).await;
            match r {
                Ok(Ok(_)) => Some((
                    avoid,
                    RegionLatency {
                        region,
                        name,
                        latency: start.elapsed(),
                    },
                )),
                Ok(Err(e)) => {
                    debug!(region, error = %e, "DERP region unreachable");
                    None
                }
                Err(_) => None,
            }
        })
    });
    let measured = futures_util::future::join_all(probes).await;
    fastest_first(measured.into_iter().flatten().collect(), map)
}

/// `(avoid, latency)` pairs as [`measure`] returns them: avoided regions last, the rest by
/// latency weighed with the map's region scores.
fn fastest_first(mut out: Vec<(bool, RegionLatency)>, map: &DerpMap) -> Vec<RegionLatency> {
    let scores = netinfo::region_scores(map);
    out.sort_by_key(|(avoid, r)| (*avoid, netinfo::scored(scores, r.region, r.latency)));
    out.into_iter().map(|(_, r)| r).collect()
}

/// What connecting a region needs.
#[derive(Clone)]
pub struct RegionDialer {
    /// Sorted per node: the token only to the Coder URL's origin ([`DerpHeaders`]).
    pub headers: DerpHeaders,
    pub key: [u8; 32],
    pub force_websockets: bool,
    /// Trust for `https` nodes (`None`: the default of [`crate::transport::tls`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub wg: mpsc::Sender<WgCommand>,
    pub inbound: mpsc::Sender<RelayIn>,
    pub stop: watch::Receiver<bool>,
}

impl RegionDialer {
    /// Connects to `region` of `map` in the background, retrying with backoff until it
    /// works or the session stops, then adds it to the data plane.
    pub fn spawn(&self, map: &DerpMap, region: i64, home: bool) {
        let node = map
            .regions
            .get(&region)
            .and_then(|r| r.nodes.iter().find(|n| !n.stun_only));
        let Some((url, node)) = node.and_then(|n| Some((derp_url(n)?, n))) else {
            warn!(region, "DERP region has no usable node");
            return;
        };
        let server_name = (!node.cert_name.is_empty()).then(|| node.cert_name.clone());
        let headers = self.headers.for_node(&url);
        let d = self.clone();
        tokio::spawn(async move {
            let mut backoff = derp::client::Backoff::default();
            let mut stop = d.stop.clone();
            loop {
                let opts = ConnectOptions {
                    transport: if d.force_websockets {
                        DerpTransport::WebSocket
                    } else {
                        DerpTransport::Upgrade
                    },
                    info: ClientInfo::default(),
                    preferred: home,
                    tls: d.tls.clone(),
                    server_name: server_name.clone(),
                };
                let key = NodePrivateKey::from_bytes(d.key);
                let attempt = tokio::select! {
                    r = derp::connect_with(&url, &headers, key, opts) => r,
                    _ = stop.changed() => return,
                };
                match attempt {
                    Ok(conn) => {
                        info!(region, %url, home, "DERP connected");
                        let handle = conn.handle.clone();
                        let cmd = WgCommand::AddRelay {
                            region,
                            handle: conn.handle,
                            home,
                        };
                        if d.wg.send(cmd).await.is_err() {
                            return;
                        }
                        tokio::select! {
                            () = relay::forward_events(region, conn.events, d.inbound.clone()) => {}
                            _ = stop.changed() => {}
                        }
                        handle.close().await;
                        return;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        warn!(region, %url, error = %e, retry_in = ?delay, "DERP connect failed");
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codervpn_proto::tailnet::derp_map::HomeParams;

    fn measured(region: i64, ms: u64, avoid: bool) -> (bool, RegionLatency) {
        let latency = Duration::from_millis(ms);
        let name = format!("r{region}");
        (
            avoid,
            RegionLatency {
                region,
                name,
                latency,
            },
        )
    }

    fn order(scores: &[(i64, f64)]) -> Vec<i64> {
        let map = DerpMap {
            home_params: Some(HomeParams {
                region_score: scores.iter().copied().collect(),
            }),
            regions: Default::default(),
        };
        let out = vec![
            measured(1, 30, false),
            measured(2, 10, false),
            measured(3, 5, true),
            measured(4, 20, false),
        ];
        fastest_first(out, &map).iter().map(|r| r.region).collect()
    }

    #[test]
    fn regions_sort_by_latency_weighed_by_score_and_avoided_ones_last() {
        assert_eq!(order(&[]), [2, 4, 1, 3]);
        // Region 2 ×4 (40 ms) falls behind 1 and 4; region 1 ×0.1 (3 ms) leads; the
        // avoided region stays last whatever its score.
        assert_eq!(order(&[(2, 4.0), (1, 0.1), (3, 0.01)]), [1, 4, 2, 3]);
    }
}
