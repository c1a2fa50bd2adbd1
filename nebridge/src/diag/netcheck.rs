//! What `codervpn netcheck` prints, the network part of a bug report, and the hints
//! `codervpn ping` gives when a path stays relayed.

use std::fmt::Write as _;
use std::time::Duration;

use codervpn_engine::host::ProbeReport;
use serde_json::{Value, json};

use super::statusdoc::StatusDoc;

/// What is known about the network, for [`hints`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    pub direct_disabled: bool,
    /// STUN servers were asked at all.
    pub stun_asked: bool,
    /// Any STUN server answered.
    pub udp: bool,
    pub hard_nat: Option<bool>,
}

/// Why a path may stay on DERP, most likely first.
pub fn hints(f: Facts) -> Vec<String> {
    let mut out = Vec::new();
    if f.direct_disabled {
        out.push(
            "the deployment disables direct connections (CODER_BLOCK_DIRECT): every path is DERP"
                .to_owned(),
        );
        return out;
    }
    if !f.stun_asked {
        out.push(
            "the deployment's DERP map lists no STUN servers: our public address is unknown, \
             only addresses on this machine's interfaces are offered"
                .to_owned(),
        );
    } else if !f.udp {
        out.push(
            "no STUN server answered: outgoing UDP looks blocked (a firewall or proxy-only \
             network); DERP over HTTPS works without it"
                .to_owned(),
        );
    }
    if f.hard_nat == Some(true) {
        out.push(
            "this NAT maps our socket to a different port for every destination (hard NAT): \
             direct paths work only when the agent's side is reachable"
                .to_owned(),
        );
    }
    if out.is_empty() {
        out.push(
            "UDP leaves this machine; the agent's side may block UDP, or sit behind a hard \
             NAT — a direct path is looked for every few seconds"
                .to_owned(),
        );
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// `codervpn netcheck`'s report.
pub fn format_probe(r: &ProbeReport) -> String {
    let mut o = String::new();
    let name = |id: i64| r.regions.get(&id).cloned().unwrap_or_default();
    let _ = writeln!(o, "Report:");
    let _ = writeln!(o, "  * UDP: {}", yes(r.udp(false) || r.udp(true)));
    for (label, v6, bound) in [
        ("IPv4", false, r.ipv4_socket),
        ("IPv6", true, r.ipv6_socket),
    ] {
        let mapped = r.mapped(v6);
        let state = match (bound, mapped.is_empty()) {
            (false, _) => "no (no socket)".to_owned(),
            (true, true) => "no".to_owned(),
            (true, false) => format!(
                "yes, {}",
                mapped
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let _ = writeln!(o, "  * {label} (UDP): {state}");
    }
    let varies = match r.mapping_varies_by_destination() {
        Some(v) => yes(v).to_owned(),
        None => "unknown (needs answers from two STUN servers)".to_owned(),
    };
    let _ = writeln!(o, "  * Mapping varies by destination (hard NAT): {varies}");
    let _ = writeln!(
        o,
        "  * Direct connections: {}",
        if r.direct_disabled {
            "disabled by the deployment"
        } else {
            "allowed"
        }
    );
    let _ = writeln!(
        o,
        "  * Proxy: {}",
        r.proxy
            .as_deref()
            .unwrap_or("none (direct to the deployment)")
    );
    match r.preferred() {
        Some(id) => {
            let _ = writeln!(o, "  * Nearest DERP: {} ({id})", name(id));
        }
        None => {
            let _ = writeln!(o, "  * Nearest DERP: none reachable");
        }
    }
    let _ = writeln!(o, "  * DERP latency:");
    let stun = r.stun_latency();
    for (id, region) in &r.regions {
        let tcp = r.derp.iter().find(|(i, _)| i == id).map(|(_, d)| *d);
        let line = match (stun.get(id), tcp) {
            (Some(s), Some(t)) => format!("{} (STUN), TCP connect {}", ms(*s), ms(t)),
            (Some(s), None) => format!("{} (STUN), relay unreachable", ms(*s)),
            (None, Some(t)) => format!("TCP connect {}", ms(t)),
            (None, None) => "unreachable".to_owned(),
        };
        let _ = writeln!(o, "      - {id} {region}: {line}");
    }
    let facts = Facts {
        direct_disabled: r.direct_disabled,
        stun_asked: !r.stun.is_empty(),
        udp: r.udp(false) || r.udp(true),
        hard_nat: r.mapping_varies_by_destination(),
    };
    if !facts.udp || facts.direct_disabled || facts.hard_nat == Some(true) || !facts.stun_asked {
        let _ = writeln!(o, "Direct connections are unlikely:");
        for h in hints(facts) {
            let _ = writeln!(o, "  - {h}");
        }
    }
    o
}

/// `codervpn netcheck --json`.
pub fn probe_json(r: &ProbeReport) -> Value {
    let stun = r.stun_latency();
    json!({
        "udp": r.udp(false) || r.udp(true),
        "ipv4": r.udp(false),
        "ipv6": r.udp(true),
        "mapped_ipv4": r.mapped(false).iter().map(ToString::to_string).collect::<Vec<_>>(),
        "mapped_ipv6": r.mapped(true).iter().map(ToString::to_string).collect::<Vec<_>>(),
        "mapping_varies_by_destination": r.mapping_varies_by_destination(),
        "direct_connections_disabled": r.direct_disabled,
        "proxy": r.proxy,
        "preferred_derp": r.preferred(),
        "regions": r.regions.iter().map(|(id, name)| json!({
            "id": id,
            "name": name,
            "stun_latency_ms": stun.get(id).map(|d| d.as_secs_f64() * 1e3),
            "tcp_latency_ms": r.derp.iter().find(|(i, _)| i == id).map(|(_, d)| d.as_secs_f64() * 1e3),
        })).collect::<Vec<_>>(),
    })
}

/// The running tunnel's view of the network, from its status document.
pub fn describe_session(doc: &StatusDoc) -> String {
    let Some(n) = &doc.network else {
        return format!(
            "mode {}: the tunnel is not our engine; no network view\n",
            doc.mode
        );
    };
    let mut o = String::new();
    let _ = writeln!(o, "UDP port: {}", n.udp_port);
    let _ = writeln!(
        o,
        "STUN: {} requests, {} answers; public endpoints: {}",
        n.stun_requests,
        n.stun_responses,
        if n.stun_endpoints.is_empty() {
            "none".to_owned()
        } else {
            n.stun_endpoints.join(", ")
        }
    );
    let _ = writeln!(
        o,
        "Direct connections: {}",
        if n.direct_connections_disabled {
            "disabled by the deployment"
        } else {
            "allowed"
        }
    );
    if let Some(h) = &n.home_derp {
        let _ = writeln!(
            o,
            "Home DERP: {} ({})",
            h.name.as_deref().unwrap_or("?"),
            h.id
        );
    }
    for d in &n.derp {
        let _ = writeln!(
            o,
            "DERP {} {}: {}, {} reconnects, latency {}",
            d.id,
            d.name.as_deref().unwrap_or("?"),
            if d.connected {
                "connected"
            } else {
                "disconnected"
            },
            d.reconnects,
            d.latency_ms
                .map(|l| format!("{l:.1} ms"))
                .unwrap_or_else(|| "-".into())
        );
    }
    if let Some(c) = &doc.control_plane {
        let _ = writeln!(
            o,
            "Control plane: {}, {} redials, {} failed dials{}",
            if c.connected {
                "connected"
            } else {
                "redialling"
            },
            c.redials,
            c.failed_dials,
            c.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
    o
}

/// The facts a status document gives for [`hints`].
pub fn session_facts(doc: &StatusDoc) -> Facts {
    let Some(n) = &doc.network else {
        return Facts::default();
    };
    // Two STUN servers that saw one IPv4 address with different ports: hard NAT.
    let v4: Vec<std::net::SocketAddr> = n
        .stun_endpoints
        .iter()
        .filter_map(|e| e.parse().ok())
        .filter(|a: &std::net::SocketAddr| a.is_ipv4())
        .collect();
    let hard = v4
        .iter()
        .any(|a| v4.iter().any(|b| a.ip() == b.ip() && a.port() != b.port()));
    Facts {
        direct_disabled: n.direct_connections_disabled,
        stun_asked: n.stun_requests > 0,
        udp: n.stun_responses > 0,
        hard_nat: hard.then_some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_likely_cause_first() {
        let h = hints(Facts {
            direct_disabled: true,
            ..Default::default()
        });
        assert_eq!(h.len(), 1);
        assert!(h[0].contains("disables direct"));
        let h = hints(Facts {
            stun_asked: true,
            udp: false,
            ..Default::default()
        });
        assert!(h[0].contains("UDP looks blocked"), "{h:?}");
        let h = hints(Facts {
            stun_asked: true,
            udp: true,
            hard_nat: Some(true),
            ..Default::default()
        });
        assert!(h[0].contains("hard NAT"), "{h:?}");
        let h = hints(Facts {
            stun_asked: true,
            udp: true,
            ..Default::default()
        });
        assert!(h[0].contains("agent's side"), "{h:?}");
    }

    #[test]
    fn the_sessions_stun_endpoints_tell_a_hard_nat() {
        use super::super::statusdoc::{NetworkDoc, SCHEMA_VERSION};
        let doc = |endpoints: &[&str], responses| StatusDoc {
            schema_version: SCHEMA_VERSION,
            codervpn_version: String::new(),
            mode: "embedded".into(),
            state: "started".into(),
            error: None,
            control_plane: None,
            network: Some(NetworkDoc {
                udp_port: 1,
                stun_endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
                stun_requests: 4,
                stun_responses: responses,
                direct_connections_disabled: false,
                home_derp: None,
                derp: Vec::new(),
            }),
            workspaces: Vec::new(),
            invalid_agents: 0,
        };
        let f = session_facts(&doc(&["203.0.113.5:1000", "203.0.113.5:1001"], 2));
        assert_eq!((f.udp, f.hard_nat), (true, Some(true)));
        let f = session_facts(&doc(&["203.0.113.5:1000", "[2001:db8::1]:1000"], 2));
        assert_eq!(f.hard_nat, None);
        let f = session_facts(&doc(&[], 0));
        assert!(f.stun_asked && !f.udp);
        assert!(hints(f)[0].contains("UDP looks blocked"));
    }
}
