//! `codervpn netcheck` (issue #19): what the network between this machine and a Coder
//! deployment allows, without a tunnel — from the deployment's URL and a token. Asks the
//! deployment for its DERP map, sends STUN binding requests to every STUN server of it from
//! one IPv4 and one IPv6 socket, and times a TCP connect to each region's relay (through the
//! environment's HTTP proxy when it names one, as the tunnel would).
//!
//! What it tells: whether UDP leaves this machine at all (any STUN answer), IPv4 and IPv6
//! separately, the public (mapped) addresses, whether the NAT maps one socket to different
//! ports for different destinations ("hard NAT": direct connections then rarely work), each
//! region's latency, and the region the tunnel would make its home.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tokio::net::UdpSocket;

use super::api::Api;
use super::join::netinfo;
use super::join::relays;
use crate::net::netcheck::StunServer;
use crate::net::stun::{self, TxId};

/// How long the STUN probe waits for answers.
pub const STUN_WAIT: Duration = Duration::from_secs(3);
/// Requests are resent to silent servers this often within [`STUN_WAIT`].
const RESEND: Duration = Duration::from_millis(500);

/// One STUN server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunAnswer {
    pub server: StunServer,
    /// Our address as the server saw it, and the round trip of the first answer.
    pub answer: Option<(SocketAddr, Duration)>,
}

/// What [`probe`] found.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// Every STUN server of the map, answered or not.
    pub stun: Vec<StunAnswer>,
    /// Whether an IPv4 / IPv6 socket could be bound at all.
    pub ipv4_socket: bool,
    pub ipv6_socket: bool,
    /// The deployment disables direct connections (DERP only, whatever the network).
    pub direct_disabled: bool,
    /// Region names by id.
    pub regions: BTreeMap<i64, String>,
    /// Latency of a TCP connect to each reachable region's relay, fastest first.
    pub derp: Vec<(i64, Duration)>,
    /// The proxy connections to the deployment go through, as shown to users.
    pub proxy: Option<String>,
}

impl ProbeReport {
    /// Some STUN server answered over this family.
    pub fn udp(&self, v6: bool) -> bool {
        self.stun
            .iter()
            .any(|s| s.server.addr.is_ipv6() == v6 && s.answer.is_some())
    }

    /// Distinct mapped addresses over this family, sorted.
    pub fn mapped(&self, v6: bool) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .stun
            .iter()
            .filter(|s| s.server.addr.is_ipv6() == v6)
            .filter_map(|s| s.answer.map(|(a, _)| a))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether the IPv4 mapping varies by destination: `None` unless servers at two or
    /// more different addresses answered (one server cannot tell).
    pub fn mapping_varies_by_destination(&self) -> Option<bool> {
        let answered: BTreeMap<std::net::IpAddr, SocketAddr> = self
            .stun
            .iter()
            .filter(|s| s.server.addr.is_ipv4())
            .filter_map(|s| s.answer.map(|(a, _)| (s.server.addr.ip(), a)))
            .collect();
        if answered.len() < 2 {
            return None;
        }
        let mut mapped: Vec<SocketAddr> = answered.into_values().collect();
        mapped.dedup();
        Some(mapped.len() > 1)
    }

    /// STUN round trips per region (lowest per region), by region id.
    pub fn stun_latency(&self) -> BTreeMap<i64, Duration> {
        let mut out: BTreeMap<i64, Duration> = BTreeMap::new();
        for s in &self.stun {
            if let Some((_, rtt)) = s.answer {
                let e = out.entry(s.server.region).or_insert(rtt);
                *e = (*e).min(rtt);
            }
        }
        out
    }

    /// The region the tunnel would choose as home: the fastest by STUN when UDP works,
    /// else by TCP connect (as measured at join).
    pub fn preferred(&self) -> Option<i64> {
        let stun = self.stun_latency();
        match stun.iter().min_by_key(|(_, d)| **d) {
            Some((id, _)) => Some(*id),
            None => self.derp.first().map(|(id, _)| *id),
        }
    }
}

/// Why the probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("asking {url} for its DERP map: {message}")]
    Deployment { url: String, message: String },
}

/// Probes the network towards the deployment at `url`.
pub async fn probe(
    url: &url::Url,
    token: &str,
    headers: &[(String, String)],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<ProbeReport, ProbeError> {
    let failed = |message: String| ProbeError::Deployment {
        url: url.to_string(),
        message,
    };
    let tls = match tls {
        Some(t) => t,
        None => {
            crate::transport::tls::default_client_config().map_err(|e| failed(e.to_string()))?
        }
    };
    let api = Api::new(url, token, headers, &tls).map_err(|e| failed(e.to_string()))?;
    let info = api
        .connection_info()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let servers = netinfo::stun_servers(&info.derp_map).await;
    let (stun, ipv4_socket, ipv6_socket) = stun_all(&servers).await;
    let derp = relays::measure(&info.derp_map)
        .await
        .into_iter()
        .map(|r| (r.region, r.latency))
        .collect();
    let proxy = match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => crate::transport::proxy::Proxies::from_env()
            .select(url.scheme(), host, port)
            .ok()
            .flatten()
            .map(|p| p.shown),
        _ => None,
    };
    Ok(ProbeReport {
        stun,
        ipv4_socket,
        ipv6_socket,
        direct_disabled: info.disable_direct_connections,
        regions: info
            .derp_map
            .regions
            .iter()
            .map(|(id, r)| (*id, r.region_name.clone()))
            .collect(),
        derp,
        proxy,
    })
}

/// Binding requests to every server from one socket per family, resent every
/// [`RESEND`] to the silent ones, for [`STUN_WAIT`].
async fn stun_all(servers: &[StunServer]) -> (Vec<StunAnswer>, bool, bool) {
    let v4 = UdpSocket::bind("0.0.0.0:0").await.ok();
    let v6 = UdpSocket::bind("[::]:0").await.ok();
    let mut answers: Vec<StunAnswer> = servers
        .iter()
        .map(|s| StunAnswer {
            server: *s,
            answer: None,
        })
        .collect();
    let mut sent: Vec<(TxId, Instant)> = Vec::with_capacity(servers.len());
    for _ in servers {
        let mut tx = TxId::default();
        OsRng.fill_bytes(&mut tx);
        sent.push((tx, Instant::now()));
    }
    let deadline = tokio::time::Instant::now() + STUN_WAIT;
    let (mut buf4, mut buf6) = (vec![0u8; 1500], vec![0u8; 1500]);
    let mut next_send = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline || answers.iter().all(|a| a.answer.is_some()) {
            break;
        }
        if now >= next_send {
            for (i, a) in answers.iter().enumerate() {
                if a.answer.is_some() {
                    continue;
                }
                let sock = if a.server.addr.is_ipv4() { &v4 } else { &v6 };
                if let Some(sock) = sock {
                    sent[i].1 = Instant::now();
                    let _ = sock
                        .send_to(&stun::binding_request(sent[i].0), a.server.addr)
                        .await;
                }
            }
            next_send = now + RESEND;
        }
        let wait = next_send.min(deadline);
        let got = tokio::select! {
            r = recv(&v4, &mut buf4) => r.map(|(n, from)| (&buf4[..n], from)),
            r = recv(&v6, &mut buf6) => r.map(|(n, from)| (&buf6[..n], from)),
            () = tokio::time::sleep_until(wait) => None,
        };
        let Some((packet, from)) = got else { continue };
        let Ok((tx, mapped)) = stun::parse_response(packet) else {
            continue;
        };
        if let Some(i) = sent.iter().position(|(t, _)| *t == tx)
            && answers[i].server.addr == from
            && answers[i].answer.is_none()
        {
            answers[i].answer = Some((mapped, sent[i].1.elapsed()));
        }
    }
    (answers, v4.is_some(), v6.is_some())
}

async fn recv(sock: &Option<UdpSocket>, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(region: i64, server: &str, mapped: Option<&str>) -> StunAnswer {
        StunAnswer {
            server: StunServer {
                region,
                addr: server.parse().unwrap(),
            },
            answer: mapped.map(|m| (m.parse().unwrap(), Duration::from_millis(region as u64))),
        }
    }

    fn report(stun: Vec<StunAnswer>) -> ProbeReport {
        ProbeReport {
            stun,
            ipv4_socket: true,
            ipv6_socket: true,
            direct_disabled: false,
            regions: BTreeMap::new(),
            derp: vec![(7, Duration::from_millis(1))],
            proxy: None,
        }
    }

    #[test]
    fn a_mapping_that_changes_with_the_destination_is_a_hard_nat() {
        let easy = report(vec![
            answer(1, "192.0.2.1:3478", Some("203.0.113.5:40000")),
            answer(2, "192.0.2.2:3478", Some("203.0.113.5:40000")),
        ]);
        assert_eq!(easy.mapping_varies_by_destination(), Some(false));
        let hard = report(vec![
            answer(1, "192.0.2.1:3478", Some("203.0.113.5:40000")),
            answer(2, "192.0.2.2:3478", Some("203.0.113.5:40001")),
        ]);
        assert_eq!(hard.mapping_varies_by_destination(), Some(true));
        let one = report(vec![
            answer(1, "192.0.2.1:3478", Some("203.0.113.5:40000")),
            answer(2, "192.0.2.2:3478", None),
        ]);
        assert_eq!(
            one.mapping_varies_by_destination(),
            None,
            "one answer cannot tell"
        );
    }

    #[test]
    fn udp_and_the_preferred_region_follow_the_answers() {
        let r = report(vec![
            answer(3, "192.0.2.1:3478", Some("203.0.113.5:40000")),
            answer(2, "[2001:db8::1]:3478", Some("[2001:db8::9]:40000")),
            answer(1, "192.0.2.9:3478", None),
        ]);
        assert!(r.udp(false) && r.udp(true));
        assert_eq!(r.preferred(), Some(2), "lowest STUN round trip");
        assert_eq!(r.mapped(true), vec!["[2001:db8::9]:40000".parse().unwrap()]);
        let silent = report(vec![answer(1, "192.0.2.9:3478", None)]);
        assert!(!silent.udp(false));
        assert_eq!(
            silent.preferred(),
            Some(7),
            "no UDP: the fastest TCP connect"
        );
    }
}
