//! Applying merged [`NetworkSettings`] to a macOS utun, for `codervpn up` without Coder
//! Desktop (issue #15): MTU and addresses with `ifconfig(8)`, routes with `route(8)` (the
//! argument vectors come from `codervpn-machost`), split DNS in `/etc/resolver/<suffix>`
//! files naming the in-tunnel resolver.
//!
//! - Every apply is a diff of two [`Plan`]s (the same pure plan the Linux backend uses), as
//!   a list of commands computed by [`commands`] — tested on Linux. Running them is macOS
//!   only: **compiled for `aarch64-apple-darwin`, never run on a Mac**.
//! - Teardown deletes the routes and the resolver files; the addresses go with the utun
//!   when its descriptor closes.
//! - Resolver files need match domains: with none, nothing is written and one WARN says
//!   names will not resolve through the system resolver.

use codervpn_machost::commands::{self, Command, CommandError};

use super::merge::Dns;
use super::plan::Plan;

/// The commands that bring `ifname` from `have` to `want`, in order: MTU and link up (when
/// the MTU changed), routes that go, addresses that go, addresses that come, routes that
/// come. Pure.
pub fn commands(ifname: &str, have: &Plan, want: &Plan) -> Result<Vec<Command>, CommandError> {
    let mut out = Vec::new();
    if want.mtu != have.mtu
        && let Some(mtu) = want.mtu
    {
        out.push(commands::mtu_up(ifname, mtu)?);
    }
    for r in have.routes.difference(&want.routes) {
        let d = r.destination;
        out.push(commands::route(false, d.addr(), d.prefix_len(), ifname)?);
    }
    for a in have.addrs.difference(&want.addrs) {
        out.push(commands::remove_address(ifname, a.addr())?);
    }
    for a in want.addrs.difference(&have.addrs) {
        out.push(commands::add_address(ifname, a.addr(), a.prefix_len())?);
    }
    for r in want.routes.difference(&have.routes) {
        let d = r.destination;
        out.push(commands::route(true, d.addr(), d.prefix_len(), ifname)?);
    }
    Ok(out)
}

/// The commands that undo `have` while the utun lives: its routes deleted (its addresses
/// go with the device).
pub fn teardown_commands(ifname: &str, have: &Plan) -> Result<Vec<Command>, CommandError> {
    have.routes
        .iter()
        .map(|r| {
            commands::route(
                false,
                r.destination.addr(),
                r.destination.prefix_len(),
                ifname,
            )
        })
        .collect()
}

/// What split DNS needs from `dns`: the suffixes to write resolver files for and the
/// servers they name; `None` when there is nothing to write (no servers or no domains).
pub fn resolver_entries(dns: Option<&Dns>) -> Option<(Vec<String>, Vec<std::net::IpAddr>)> {
    let dns = dns?;
    if dns.servers.is_empty() || dns.match_domains.is_empty() {
        return None;
    }
    Some((dns.match_domains.clone(), dns.servers.clone()))
}

#[cfg(target_os = "macos")]
pub use on_mac::MacNetworkConfig;

#[cfg(target_os = "macos")]
mod on_mac {
    use std::sync::{Arc, Mutex};

    use codervpn_machost::commands::Command;
    use codervpn_machost::resolver::{RESOLVER_DIR, ResolverError, ResolverFiles};
    use futures_util::future::BoxFuture;
    use tracing::{debug, warn};

    use super::super::HostNetwork;
    use super::super::merge::NetworkSettings;
    use super::super::plan::{Plan, plan};
    use super::{commands, resolver_entries, teardown_commands};

    /// The settings applied to one utun, and how to undo them.
    pub struct MacNetworkConfig {
        interface: String,
        resolver: Option<Arc<Mutex<ResolverFiles>>>,
        applied: Plan,
    }

    impl MacNetworkConfig {
        /// Settings for the utun `interface`; split DNS in `/etc/resolver` files when
        /// `resolver_files`, else none (workspace names then resolve only through the
        /// in-tunnel resolver's address).
        pub fn new(interface: impl Into<String>, resolver_files: bool) -> Self {
            Self {
                interface: interface.into(),
                resolver: resolver_files.then(|| {
                    Arc::new(Mutex::new(ResolverFiles::new(
                        RESOLVER_DIR,
                        std::process::id(),
                    )))
                }),
                applied: Plan::default(),
            }
        }

        async fn apply_plan(&mut self, want: Plan) -> Result<(), String> {
            let cmds =
                commands(&self.interface, &self.applied, &want).map_err(|e| e.to_string())?;
            run_all(cmds).await?;
            if let Some(resolver) = self.resolver.clone()
                && want.dns != self.applied.dns
            {
                let entries = resolver_entries(want.dns.as_ref());
                if entries.is_none() && want.dns.is_some() {
                    warn!(interface = %self.interface, "the tunnel's DNS settings name no match domains: workspace names will not resolve through the system resolver");
                }
                blocking(move || {
                    let mut files = resolver.lock().unwrap_or_else(|p| p.into_inner());
                    files.remove()?;
                    if let Some((suffixes, servers)) = entries {
                        files.apply(&suffixes, &servers, alive)?;
                    }
                    Ok(())
                })
                .await?;
            }
            self.applied = want;
            Ok(())
        }
    }

    impl HostNetwork for MacNetworkConfig {
        fn interface(&self) -> &str {
            &self.interface
        }

        fn apply<'a>(
            &'a mut self,
            settings: &'a NetworkSettings,
        ) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(self.apply_plan(plan(settings)))
        }

        fn teardown(&mut self) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async move {
                let routes =
                    teardown_commands(&self.interface, &self.applied).map_err(|e| e.to_string());
                self.applied = Plan::default();
                let dns = match self.resolver.clone() {
                    Some(resolver) => {
                        blocking(move || {
                            let mut files = resolver.lock().unwrap_or_else(|p| p.into_inner());
                            files.remove().map(drop)
                        })
                        .await
                    }
                    None => Ok(()),
                };
                // Routes of a utun that is already gone went with it: their failures are
                // logged, not returned.
                if let Err(e) = run_all(routes?).await {
                    debug!(error = %e, "removing routes");
                }
                dns
            })
        }
    }

    /// Whether process `pid` still runs (`kill(pid, 0)`; EPERM: it runs as someone else).
    fn alive(pid: u32) -> bool {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }

    async fn blocking(
        call: impl FnOnce() -> Result<(), ResolverError> + Send + 'static,
    ) -> Result<(), String> {
        match tokio::task::spawn_blocking(call).await {
            Ok(r) => r.map_err(|e| format!("DNS: {e}")),
            Err(e) => Err(format!("DNS: {e}")),
        }
    }

    /// Runs the commands in order, off the runtime's threads; stops at the first that
    /// fails, naming it and what it printed.
    async fn run_all(cmds: Vec<Command>) -> Result<(), String> {
        if cmds.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || cmds.iter().try_for_each(run))
            .await
            .map_err(|e| e.to_string())?
    }

    fn run(c: &Command) -> Result<(), String> {
        let line = format!("{} {}", c.program, c.args.join(" "));
        let out = std::process::Command::new(c.program)
            .args(&c.args)
            .output()
            .map_err(|e| format!("{line}: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // route(8) says "File exists" for a route already there and "not in table" for
        // one already gone: both are the state we wanted.
        if out.status.success() || stderr.contains("File exists") || stderr.contains("not in table")
        {
            debug!(command = %line, "ran");
            return Ok(());
        }
        Err(format!("{line}: {} ({})", stderr.trim(), out.status))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use super::*;
    use crate::settings::merge::Route;

    fn plan(addrs: &[&str], routes: &[&str], mtu: u32) -> Plan {
        Plan {
            mtu: Some(mtu),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            routes: routes
                .iter()
                .map(|r| Route {
                    destination: r.parse().unwrap(),
                    gateway: None,
                })
                .collect::<BTreeSet<_>>(),
            dns: None,
        }
    }

    fn lines(cmds: &[Command]) -> Vec<String> {
        cmds.iter()
            .map(|c| format!("{} {}", c.program, c.args.join(" ")))
            .collect()
    }

    #[test]
    fn a_coder_tunnel_comes_up_with_mtu_address_and_route_in_that_order() {
        let want = plan(&["fd60:627a:a42b:1::2/128"], &["fd60:627a:a42b::/48"], 1280);
        let got = commands("utun4", &Plan::default(), &want).unwrap();
        assert_eq!(
            lines(&got),
            [
                "/sbin/ifconfig utun4 mtu 1280 up",
                "/sbin/ifconfig utun4 inet6 fd60:627a:a42b:1::2 prefixlen 128 alias",
                "/sbin/route -q -n add -inet6 -net fd60:627a:a42b::/48 -interface utun4",
            ]
        );
        assert!(commands("utun4", &want, &want).unwrap().is_empty());
    }

    #[test]
    fn a_changed_address_and_route_are_swapped_routes_out_first() {
        let have = plan(&["fd60::2/128"], &["fd60::/48"], 1280);
        let want = plan(&["fd60::3/128"], &["fd61::/48"], 1280);
        assert_eq!(
            lines(&commands("utun4", &have, &want).unwrap()),
            [
                "/sbin/route -q -n delete -inet6 -net fd60::/48 -interface utun4",
                "/sbin/ifconfig utun4 inet6 fd60::2 -alias",
                "/sbin/ifconfig utun4 inet6 fd60::3 prefixlen 128 alias",
                "/sbin/route -q -n add -inet6 -net fd61::/48 -interface utun4",
            ]
        );
    }

    #[test]
    fn teardown_deletes_the_routes_only() {
        let have = plan(&["fd60::2/128"], &["fd60::/48", "10.0.0.0/8"], 1280);
        assert_eq!(
            lines(&teardown_commands("utun4", &have).unwrap()),
            [
                "/sbin/route -q -n delete -inet -net 10.0.0.0/8 -interface utun4",
                "/sbin/route -q -n delete -inet6 -net fd60::/48 -interface utun4",
            ]
        );
    }

    #[test]
    fn a_name_that_is_not_a_utun_is_refused_before_anything_runs() {
        let want = plan(&["fd60::2/128"], &[], 1280);
        assert!(commands("en0", &Plan::default(), &want).is_err());
    }

    #[test]
    fn resolver_files_need_servers_and_match_domains() {
        let dns = Dns {
            servers: vec!["fd60:627a:a42b::53".parse().unwrap()],
            match_domains: vec!["coder.".into()],
            ..Default::default()
        };
        let (suffixes, servers) = resolver_entries(Some(&dns)).unwrap();
        assert_eq!((suffixes, servers.len()), (vec!["coder.".to_owned()], 1));
        let no_domains = Dns {
            match_domains: vec![],
            ..dns.clone()
        };
        assert!(resolver_entries(Some(&no_domains)).is_none());
        assert!(resolver_entries(None).is_none());
    }
}
