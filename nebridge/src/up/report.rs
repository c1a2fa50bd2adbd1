//! What `codervpn up` tells its user and its log: the settings it applies, the proxy it
//! goes through, which agents are reachable by name, and a compat tunnel's log lines.

use std::time::{Duration, SystemTime};

use codervpn_nebridge::status::StatusPublisher;
use codervpn_proto::vpn;
use tracing::{info, warn};

/// A compat tunnel's `Log` frames into our log (and so to stderr and the journal), at
/// their level (codervpn-protocol.md §9), under the target `tunnel`.
pub(super) fn forward_tunnel_log(l: vpn::Log) {
    use vpn::log::Level;
    let fields: Vec<String> = l
        .fields
        .iter()
        .map(|f| format!("{}={}", f.name, f.value))
        .collect();
    let names = l.logger_names.join(".");
    match Level::try_from(l.level).unwrap_or(Level::Info) {
        Level::Debug => {
            tracing::debug!(target: "tunnel", logger = %names, fields = %fields.join(" "), "{}", l.message)
        }
        Level::Info => {
            tracing::info!(target: "tunnel", logger = %names, fields = %fields.join(" "), "{}", l.message)
        }
        Level::Warn => {
            tracing::warn!(target: "tunnel", logger = %names, fields = %fields.join(" "), "{}", l.message)
        }
        Level::Error | Level::Critical | Level::Fatal => {
            tracing::error!(target: "tunnel", logger = %names, fields = %fields.join(" "), "{}", l.message)
        }
    }
}

/// How long `up` waits after the tunnel started for the first workspace list.
pub(super) const FIRST_UPDATE_WAIT: Duration = Duration::from_secs(5);

/// One line for the user: how many agents in how many workspaces are reachable by name,
/// with one name to try.
pub(super) fn reachable(u: &vpn::PeerUpdate) -> String {
    let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    let names = u.upserted_agents.iter().flat_map(|a| &a.fqdn);
    let example = names
        .clone()
        .find(|f| f.contains(".me."))
        .or_else(|| names.clone().next())
        .map(|f| format!(", e.g. {}", f.trim_end_matches('.')))
        .unwrap_or_default();
    format!(
        "{} in {} reachable by name{example}",
        plural(u.upserted_agents.len(), "agent"),
        plural(u.upserted_workspaces.len(), "workspace")
    )
}

/// A `PeerUpdate` from the tunnel: agents newly available are logged (once each, not at
/// every status update) and the status socket's model takes the update.
pub(super) fn on_update(
    u: &vpn::PeerUpdate,
    announced: &mut std::collections::HashSet<Vec<u8>>,
    publisher: &mut StatusPublisher,
) {
    for a in &u.upserted_agents {
        if a.last_ping.is_none()
            && a.last_handshake.as_ref().is_some_and(|t| t.seconds < 0)
            && announced.insert(a.id.clone())
        {
            info!(agent = %a.name, fqdn = ?a.fqdn, "agent available");
        }
    }
    publisher.peer_update(u, SystemTime::now());
}

pub(super) fn describe(s: &vpn::NetworkSettingsRequest) {
    for line in codervpn_nebridge::settings::describe(s) {
        eprintln!("  {line}");
    }
}

/// " through proxy …" when the environment sends connections to `url` through an HTTP
/// proxy (and a warning when its proxy setting cannot be used), else nothing.
pub(super) fn proxy_note(url: &url::Url) -> String {
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return String::new();
    };
    match codervpn_engine::host::Proxies::from_env().select(url.scheme(), host, port) {
        Ok(Some(p)) => format!(" through proxy {}", p.shown),
        Ok(None) => String::new(),
        Err(e) => {
            warn!("{e}; connections to {host} will fail");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(fqdn: &[&str]) -> vpn::Agent {
        vpn::Agent {
            fqdn: fqdn.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn reachable_counts_agents_and_workspaces_and_offers_the_me_name() {
        let u = vpn::PeerUpdate {
            upserted_workspaces: vec![Default::default()],
            upserted_agents: vec![agent(&[
                "dev.coder.",
                "main.dev.me.coder.",
                "main.dev.ann.coder.",
            ])],
            ..Default::default()
        };
        assert_eq!(
            reachable(&u),
            "1 agent in 1 workspace reachable by name, e.g. main.dev.me.coder"
        );
        let u = vpn::PeerUpdate {
            upserted_workspaces: vec![Default::default(); 2],
            upserted_agents: vec![agent(&["a.coder."]), agent(&[])],
            ..Default::default()
        };
        assert_eq!(
            reachable(&u),
            "2 agents in 2 workspaces reachable by name, e.g. a.coder"
        );
        assert_eq!(
            reachable(&vpn::PeerUpdate::default()),
            "0 agents in 0 workspaces reachable by name"
        );
    }
}
