//! Prometheus text exposition (format 0.0.4) of the tunnel's counters (issue #19), for
//! `codervpn metrics` and `codervpn up --metrics-listen`.

use std::fmt::Write as _;

use codervpn_engine::host::EngineSnapshot;
use codervpn_engine::host::Path;

use super::statusdoc::peer_of;
use crate::status::StatusSnapshot;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics for `snapshot` and, with our engine in-process, `engine`.
pub fn render(snapshot: &StatusSnapshot, engine: Option<&EngineSnapshot>) -> String {
    let mut o = Out(String::new());
    o.one(
        "codervpn_up",
        "gauge",
        "1 while the tunnel is started.",
        u8::from(snapshot.state == "started"),
    );
    let agents: Vec<_> = snapshot
        .workspaces
        .iter()
        .flat_map(|w| w.agents.iter().map(move |a| (w, a)))
        .collect();
    o.one(
        "codervpn_agents",
        "gauge",
        "Agents of the user's workspaces the tunnel knows.",
        agents.len(),
    );
    let Some(e) = engine else {
        return o.0;
    };
    let t = &e.wg.traffic;
    let flows = [
        ("direct", "tx", t.udp_tx),
        ("direct", "rx", t.udp_rx),
        ("derp", "tx", t.derp_tx),
        ("derp", "rx", t.derp_rx),
    ];
    for (name, help, bytes) in [
        (
            "codervpn_wireguard_bytes_total",
            "WireGuard datagram bytes by path and direction.",
            true,
        ),
        (
            "codervpn_wireguard_packets_total",
            "WireGuard datagrams by path and direction.",
            false,
        ),
    ] {
        o.family(name, "counter", help);
        for (path, dir, f) in flows {
            let n = if bytes { f.bytes } else { f.packets };
            o.sample(name, &[("path", path), ("direction", dir)], n);
        }
    }
    o.family(
        "codervpn_wireguard_handshake_messages_total",
        "counter",
        "WireGuard handshake messages by type and direction.",
    );
    let h = &t.handshakes;
    for (kind, dir, n) in [
        ("initiation", "tx", h.initiations_sent),
        ("initiation", "rx", h.initiations_received),
        ("response", "tx", h.responses_sent),
        ("response", "rx", h.responses_received),
    ] {
        o.sample(
            "codervpn_wireguard_handshake_messages_total",
            &[("type", kind), ("direction", dir)],
            n,
        );
    }
    o.family(
        "codervpn_peer_path",
        "gauge",
        "1 for the path packets to each agent take now.",
    );
    let peers: Vec<_> = agents
        .iter()
        .filter_map(|(w, a)| peer_of(a, e).map(|p| (format!("{}.{}", a.name, w.name), p)))
        .collect();
    for (agent, p) in &peers {
        let path = match p.path {
            Some(Path::Direct { .. }) => "direct",
            _ => "derp",
        };
        o.sample("codervpn_peer_path", &[("agent", agent), ("path", path)], 1);
    }
    o.family(
        "codervpn_peer_bytes_total",
        "counter",
        "WireGuard payload bytes per agent and direction.",
    );
    for (agent, p) in &peers {
        o.sample(
            "codervpn_peer_bytes_total",
            &[("agent", agent), ("direction", "rx")],
            p.rx_bytes,
        );
        o.sample(
            "codervpn_peer_bytes_total",
            &[("agent", agent), ("direction", "tx")],
            p.tx_bytes,
        );
    }
    o.family(
        "codervpn_peer_last_handshake_age_seconds",
        "gauge",
        "Seconds since each agent's last WireGuard handshake.",
    );
    for (agent, p) in &peers {
        if let Some(age) = p.since_last_handshake {
            o.sample(
                "codervpn_peer_last_handshake_age_seconds",
                &[("agent", agent)],
                age.as_secs_f64(),
            );
        }
    }
    o.family(
        "codervpn_derp_connected",
        "gauge",
        "1 while the connection to a DERP region is up.",
    );
    let regions: Vec<(String, String, _)> =
        e.wg.derp
            .iter()
            .map(|(id, s)| {
                let name = e.regions.get(id).cloned().unwrap_or_default();
                (id.to_string(), name, *s)
            })
            .collect();
    for (id, name, s) in &regions {
        o.sample(
            "codervpn_derp_connected",
            &[("region_id", id), ("region", name)],
            u8::from(s.connected),
        );
    }
    o.family(
        "codervpn_derp_reconnects_total",
        "counter",
        "Reconnections to each DERP region after the first connection.",
    );
    for (id, name, s) in &regions {
        o.sample(
            "codervpn_derp_reconnects_total",
            &[("region_id", id), ("region", name)],
            s.reconnects(),
        );
    }
    o.one(
        "codervpn_control_connected",
        "gauge",
        "1 while the tailnet (coordination) connection is up.",
        u8::from(e.control.connected),
    );
    o.one(
        "codervpn_control_redials_total",
        "counter",
        "Tailnet reconnections after the first connection.",
        e.control.redials,
    );
    o.one(
        "codervpn_control_failed_dials_total",
        "counter",
        "Tailnet dial attempts that failed.",
        e.control.failed_dials,
    );
    let d = &e.wg.dns;
    o.family(
        "codervpn_dns_queries_total",
        "counter",
        "Queries to the in-tunnel resolver (TCP: segments).",
    );
    o.sample(
        "codervpn_dns_queries_total",
        &[("transport", "udp")],
        d.udp_queries,
    );
    o.sample(
        "codervpn_dns_queries_total",
        &[("transport", "tcp")],
        d.tcp_segments,
    );
    o.family(
        "codervpn_dns_answers_total",
        "counter",
        "UDP answers of the in-tunnel resolver by response code.",
    );
    for (rcode, n) in [
        ("noerror", d.noerror),
        ("nxdomain", d.nxdomain),
        ("other", d.other_rcode),
    ] {
        o.sample("codervpn_dns_answers_total", &[("rcode", rcode)], n);
    }
    o.one(
        "codervpn_dns_dropped_total",
        "counter",
        "UDP queries to the in-tunnel resolver left unanswered (malformed).",
        d.dropped,
    );
    o.one(
        "codervpn_stun_requests_total",
        "counter",
        "STUN binding requests sent from the tunnel's UDP socket.",
        e.wg.stun.requests_sent,
    );
    o.one(
        "codervpn_stun_responses_total",
        "counter",
        "STUN answers received.",
        e.wg.stun.responses,
    );
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn without_an_engine_only_the_tunnel_state_is_exported() {
        let s = StatusSnapshot {
            state: "started".into(),
            ..Default::default()
        };
        let text = render(&s, None);
        assert!(text.contains("\ncodervpn_up 1\n"), "{text}");
        assert!(!text.contains("codervpn_wireguard"), "{text}");
    }
}
