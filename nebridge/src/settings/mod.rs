//! Network settings from the tunnel: the merge model (sans-IO) and the Linux backend.

pub mod linux;
pub mod merge;
pub mod resolvconf;

pub use linux::{ApplyError, LinuxNetworkConfig, Plan, SplitDns};

/// One interface's settings as the tunnel asked for them: each request merged into what
/// is applied and applied as a diff (manager-behaviour.md §5), all removed by
/// [`SharedConfig::teardown`]. Cheap to clone; requests are applied one at a time.
#[derive(Clone)]
pub struct SharedConfig(std::sync::Arc<tokio::sync::Mutex<(LinuxNetworkConfig, NetworkSettings)>>);

impl SharedConfig {
    pub fn new(config: LinuxNetworkConfig) -> Self {
        Self(std::sync::Arc::new(tokio::sync::Mutex::new((
            config,
            NetworkSettings::default(),
        ))))
    }

    /// Merges `req` into the applied settings and applies the result.
    pub async fn apply(
        &self,
        req: &codervpn_proto::vpn::NetworkSettingsRequest,
    ) -> Result<(), String> {
        let mut guard = self.0.lock().await;
        let (cfg, current) = &mut *guard;
        let next = current.merged(req).map_err(|e| e.to_string())?;
        cfg.apply(&next).await.map_err(|e| e.to_string())?;
        *current = next;
        Ok(())
    }

    /// Removes everything applied (a failure is logged).
    pub async fn teardown(&self) {
        let mut guard = self.0.lock().await;
        if let Err(e) = guard.0.teardown().await {
            tracing::warn!(error = %e, "removing the network settings failed");
        }
    }
}
pub use merge::{Dns, InvalidSettings, IpSettings, NetworkSettings, Route};

/// One line per part of a settings request, for people watching progress:
/// `tunnel asks for address … and route … (MTU …)`, `tunnel asks for DNS server … for
/// domains …`.
pub fn describe(s: &codervpn_proto::vpn::NetworkSettingsRequest) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(v6) = &s.ipv6_settings {
        let routes: Vec<String> = v6
            .included_routes
            .iter()
            .map(|r| format!("{}/{}", r.destination, r.prefix_length))
            .collect();
        out.push(format!(
            "tunnel asks for address {} and route {} (MTU {})",
            v6.addrs.join(", "),
            routes.join(", "),
            s.mtu
        ));
    }
    if let Some(d) = &s.dns_settings {
        out.push(format!(
            "tunnel asks for DNS server {} for domains {}",
            d.servers.join(", "),
            d.match_domains.join(", ")
        ));
    }
    out
}
