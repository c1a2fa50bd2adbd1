//! Network settings from the tunnel: the merge model (sans-IO), the one seam every OS
//! backend sits behind ([`HostNetwork`]), the pure plan both backends diff ([`plan`]), and
//! the Linux and macOS backends.

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(any(target_os = "macos", test))]
pub mod macos;
pub mod merge;
pub mod plan;
pub mod reassert;
pub mod resolvconf;
pub mod resolvconf_tool;
pub mod split_dns;
pub mod tool;

use futures_util::future::BoxFuture;

#[cfg(target_os = "linux")]
pub use linux::{ApplyError, LinuxNetworkConfig};
pub use plan::Plan;
pub use split_dns::SplitDns;

/// The host's network configuration for one tunnel interface: what an OS backend does
/// with the settings the tunnel asks for (addresses, routes, MTU, split DNS). Linux:
/// `LinuxNetworkConfig` (netlink, then systemd-resolved or `/etc/resolv.conf`); macOS:
/// `macos::MacNetworkConfig` (`ifconfig`/`route`, `/etc/resolver`). The rest
/// of the manager only talks to this trait (through [`SharedConfig`]).
pub trait HostNetwork: Send + 'static {
    /// The interface the settings are for.
    fn interface(&self) -> &str;
    /// Brings the host to `settings`, undoing what an earlier apply installed and
    /// `settings` no longer has.
    fn apply<'a>(&'a mut self, settings: &'a NetworkSettings) -> BoxFuture<'a, Result<(), String>>;
    /// Removes everything an apply installed.
    fn teardown(&mut self) -> BoxFuture<'_, Result<(), String>>;
    /// Called every second while applied: puts back what another program changed (Linux:
    /// a rewritten resolv.conf). Nothing by default.
    fn recheck(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// One interface's settings as the tunnel asked for them: each request merged into what
/// is applied and applied as a diff (manager-behaviour.md §5), all removed by
/// [`SharedConfig::teardown`]. Cheap to clone; requests are applied one at a time. Inside a
/// tokio runtime a task calls [`HostNetwork::recheck`] every second until the last clone
/// is dropped.
#[derive(Clone)]
pub struct SharedConfig(std::sync::Arc<Shared>);

impl SharedConfig {
    pub fn new(host: impl HostNetwork) -> Self {
        let shared = Self(std::sync::Arc::new(tokio::sync::Mutex::new((
            Box::new(host),
            NetworkSettings::default(),
        ))));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(recheck_loop(std::sync::Arc::downgrade(&shared.0)));
        }
        shared
    }

    /// Merges `req` into the applied settings and applies the result.
    pub async fn apply(
        &self,
        req: &codervpn_proto::vpn::NetworkSettingsRequest,
    ) -> Result<(), String> {
        let mut guard = self.0.lock().await;
        let (cfg, current) = &mut *guard;
        let next = current.merged(req).map_err(|e| e.to_string())?;
        cfg.apply(&next).await?;
        *current = next;
        Ok(())
    }

    /// Removes everything applied (a failure is logged).
    pub async fn teardown(&self) {
        let mut guard = self.0.lock().await;
        if let Err(e) = guard.0.teardown().await {
            tracing::warn!(error = %e, interface = guard.0.interface(), "removing the network settings failed");
        }
    }
}
type Shared = tokio::sync::Mutex<(Box<dyn HostNetwork>, NetworkSettings)>;

/// [`HostNetwork::recheck`] every [`reassert::CHECK_EVERY`] while the config lives.
async fn recheck_loop(config: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(reassert::CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(config) = config.upgrade() else {
            return;
        };
        let mut guard = config.lock().await;
        if let Err(e) = guard.0.recheck().await {
            tracing::warn!(error = %e, interface = guard.0.interface(), "re-checking the network settings failed");
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
