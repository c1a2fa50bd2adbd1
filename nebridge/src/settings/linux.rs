//! Applying merged [`NetworkSettings`] to a Linux TUN interface: addresses, MTU, link up and
//! routes over rtnetlink; split DNS through systemd-resolved (`resolvectl`), or, without
//! it, `/etc/resolv.conf` managed directly ([`super::resolvconf`]).
//!
//! - **Included routes** go in the main table, out of the interface (through the route's
//!   gateway when it has one).
//! - **Excluded routes** are carved out of the included ones: each included prefix is
//!   replaced by the smallest set of prefixes that covers it minus every excluded prefix
//!   (`fd60::/48` minus `fd60::1/128` is 80 routes). Excluded destinations then simply have
//!   no route through the tunnel and follow whatever else the main table says. We do not use
//!   `throw` routes: in the main table a `throw` falls through to later policy rules, which on
//!   a stock system end at an empty `default` table, making the destination unreachable.
//! - The IPv4 `router` and DNS `domain_name` have no Linux equivalent and are ignored
//!   (routes on a TUN need no gateway; the match domains already name the zone).
//! - Split DNS shells out to `resolvectl` when systemd-resolved is running; otherwise it
//!   puts the tunnel's resolver first in a plain-file `/etc/resolv.conf` (see
//!   [`SplitDns`]); when neither can be done it logs one WARN saying what will not
//!   resolve.
//! - Every apply is a diff against what the previous one installed; [`LinuxNetworkConfig::teardown`]
//!   removes all of it. The MTU and the link state are left as they are: the interface
//!   belongs to the tunnel.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::merge::{Dns, NetworkSettings, Route};
use super::resolvconf::{RESOLV_CONF, ResolvConf, ResolvConfError, Restored};
use crate::netlink::{Netlink, NetlinkError};

/// The settings applied to one interface, and how to undo them.
pub struct LinuxNetworkConfig {
    interface: String,
    netlink: Netlink,
    split_dns: SplitDns,
    /// What the last apply installed, and on which interface index.
    applied: Plan,
    applied_index: Option<u32>,
}

/// What the kernel and the resolver should hold for some settings. Pure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub mtu: Option<u32>,
    pub addrs: BTreeSet<IpNet>,
    /// Masked destinations with their gateway, exclusions already carved out.
    pub routes: BTreeSet<Route>,
    pub dns: Option<Dns>,
}

/// How split DNS reaches the system resolver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitDns {
    /// systemd-resolved is running; configure it with this `resolvectl`.
    Resolvectl(PathBuf),
    /// No systemd-resolved, and `/etc/resolv.conf` is a plain file: manage it.
    ResolvConf(ResolvConf),
    /// No supported resolver; `why` says what is missing.
    Unavailable { why: String },
}

/// A failure to apply or remove settings; names the interface and the object.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("interface {interface}: {source}")]
    Netlink {
        interface: String,
        #[source]
        source: NetlinkError,
    },
    #[error("interface {interface}: split DNS with `resolvectl {command}` failed: {detail}")]
    Dns {
        interface: String,
        command: String,
        detail: String,
    },
    #[error("interface {interface}: DNS: {source}")]
    ResolvConf {
        interface: String,
        #[source]
        source: ResolvConfError,
    },
}

impl LinuxNetworkConfig {
    /// Settings for `interface`, with split DNS through whatever [`SplitDns::detect`] finds.
    /// Needs a tokio runtime (the netlink connection runs on it).
    pub fn new(interface: impl Into<String>) -> Result<Self, ApplyError> {
        Self::with_split_dns(interface, SplitDns::detect())
    }

    pub fn with_split_dns(
        interface: impl Into<String>,
        split_dns: SplitDns,
    ) -> Result<Self, ApplyError> {
        let interface = interface.into();
        let netlink = Netlink::connect().map_err(|source| ApplyError::Netlink {
            interface: interface.clone(),
            source,
        })?;
        if let SplitDns::ResolvConf(rc) = &split_dns {
            match rc.recover() {
                Ok(Some(pid)) => {
                    warn!(path = %rc.path().display(), pid, "restored the resolver configuration a codervpn that is gone (pid {pid}) left behind")
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(ApplyError::ResolvConf { interface, source });
                }
            }
        }
        Ok(Self {
            interface,
            netlink,
            split_dns,
            applied: Plan::default(),
            applied_index: None,
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// What is installed now.
    pub fn applied(&self) -> &Plan {
        &self.applied
    }

    /// Brings the interface to `settings`: MTU and link up, then addresses, then routes
    /// (removing what the previous apply installed and `settings` no longer has), then DNS.
    /// On error, what was installed so far is remembered, so `teardown` still removes it.
    pub async fn apply(&mut self, settings: &NetworkSettings) -> Result<(), ApplyError> {
        let want = plan(settings);
        let index = self
            .netlink
            .link_index(&self.interface)
            .await
            .map_err(|e| self.err(e))?;
        if self.applied_index != Some(index) {
            // A new interface (or a re-created one): nothing of ours is on it, and the
            // resolver has no settings for it.
            self.applied = Plan::default();
            self.applied_index = Some(index);
        }
        self.netlink
            .set_link(index, want.mtu)
            .await
            .map_err(|e| self.err(e))?;
        self.applied.mtu = want.mtu;

        for route in self.applied.routes.clone().difference(&want.routes) {
            self.remove_route(index, route).await?;
        }
        for addr in self.applied.addrs.clone().difference(&want.addrs) {
            self.remove_addr(index, *addr).await?;
        }
        for addr in want.addrs.difference(&self.applied.addrs.clone()) {
            match self.netlink.add_address(index, *addr).await {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => return Err(self.err(e)),
            }
            debug!(interface = %self.interface, %addr, "address added");
            self.applied.addrs.insert(*addr);
        }
        for route in want.routes.difference(&self.applied.routes.clone()) {
            match self
                .netlink
                .add_route_via(index, route.destination, route.gateway)
                .await
            {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => return Err(self.err(e)),
            }
            debug!(interface = %self.interface, route = %route.destination, "route added");
            self.applied.routes.insert(*route);
        }

        if want.dns != self.applied.dns {
            self.apply_dns(want.dns.as_ref()).await?;
            self.applied.dns = want.dns;
        }
        Ok(())
    }

    /// Removes every address, route and DNS setting an apply installed. Succeeds when the
    /// interface is already gone (its addresses and routes went with it). Removes as much as
    /// it can and returns the first error.
    pub async fn teardown(&mut self) -> Result<(), ApplyError> {
        let mut first_error = None;
        let index = match self.netlink.find_link(&self.interface).await {
            Ok(index) => index.filter(|i| Some(*i) == self.applied_index),
            Err(e) => {
                first_error = Some(self.err(e));
                None
            }
        };
        if let Some(index) = index {
            for route in self.applied.routes.clone() {
                if let Err(e) = self.remove_route(index, &route).await {
                    first_error.get_or_insert(e);
                }
            }
            for addr in self.applied.addrs.clone() {
                if let Err(e) = self.remove_addr(index, addr).await {
                    first_error.get_or_insert(e);
                }
            }
        }
        if self.applied.dns.is_some() {
            let gone = index.is_none();
            match self.revert_dns().await {
                Ok(()) => {}
                // resolved forgets a vanished link by itself.
                Err(_) if gone => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.applied = Plan::default();
        self.applied_index = None;
        first_error.map_or(Ok(()), Err)
    }

    async fn remove_route(&mut self, index: u32, route: &Route) -> Result<(), ApplyError> {
        match self
            .netlink
            .del_route_via(index, route.destination, route.gateway)
            .await
        {
            Ok(()) => {}
            Err(e) if matches!(e.errno(), Some(libc::ESRCH | libc::ENOENT | libc::ENODEV)) => {}
            Err(e) => return Err(self.err(e)),
        }
        debug!(interface = %self.interface, route = %route.destination, "route removed");
        self.applied.routes.remove(route);
        Ok(())
    }

    async fn remove_addr(&mut self, index: u32, addr: IpNet) -> Result<(), ApplyError> {
        match self.netlink.del_address(index, addr).await {
            Ok(()) => {}
            Err(e) if matches!(e.errno(), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => {}
            Err(e) => return Err(self.err(e)),
        }
        debug!(interface = %self.interface, %addr, "address removed");
        self.applied.addrs.remove(&addr);
        Ok(())
    }

    async fn apply_dns(&self, dns: Option<&Dns>) -> Result<(), ApplyError> {
        let Some(dns) = dns.filter(|d| !d.servers.is_empty()) else {
            return self.revert_dns().await;
        };
        match &self.split_dns {
            SplitDns::Resolvectl(bin) => {
                for args in resolvectl_commands(&self.interface, dns) {
                    self.resolvectl(bin, &args).await?;
                }
                debug!(interface = %self.interface, servers = ?dns.servers, "split DNS applied");
                Ok(())
            }
            SplitDns::ResolvConf(rc) => rc.apply(dns).map_err(|source| self.dns_err(source)),
            SplitDns::Unavailable { why } => {
                warn!(interface = %self.interface, "{}", missing_resolver_message(why, dns));
                Ok(())
            }
        }
    }

    async fn revert_dns(&self) -> Result<(), ApplyError> {
        match &self.split_dns {
            SplitDns::Resolvectl(bin) => {
                self.resolvectl(bin, &["revert".into(), self.interface.clone()])
                    .await
            }
            SplitDns::ResolvConf(rc) => match rc.restore() {
                Ok(Restored::Yes) => {
                    info!(path = %rc.path().display(), "resolver configuration restored");
                    Ok(())
                }
                Ok(Restored::NotOurs) => {
                    warn!(path = %rc.path().display(), "another program rewrote it while the tunnel ran; left as it is");
                    Ok(())
                }
                Err(source) => Err(self.dns_err(source)),
            },
            SplitDns::Unavailable { .. } => Ok(()),
        }
    }

    fn dns_err(&self, source: ResolvConfError) -> ApplyError {
        ApplyError::ResolvConf {
            interface: self.interface.clone(),
            source,
        }
    }

    async fn resolvectl(&self, bin: &Path, args: &[String]) -> Result<(), ApplyError> {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output()).await;
        let detail = match out {
            Ok(Ok(out)) if out.status.success() => return Ok(()),
            Ok(Ok(out)) => format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Ok(Err(e)) => format!("cannot run {}: {e}", bin.display()),
            Err(e) => format!("cannot run {}: {e}", bin.display()),
        };
        Err(ApplyError::Dns {
            interface: self.interface.clone(),
            command: args.join(" "),
            detail,
        })
    }

    fn err(&self, source: NetlinkError) -> ApplyError {
        ApplyError::Netlink {
            interface: self.interface.clone(),
            source,
        }
    }
}

impl SplitDns {
    /// `Resolvectl` when systemd-resolved's runtime directory exists and `resolvectl` is on
    /// `PATH`; else `ResolvConf` when `/etc/resolv.conf` is a plain file; otherwise
    /// `Unavailable` saying what is missing.
    pub fn detect() -> Self {
        if !Path::new("/run/systemd/resolve").is_dir() {
            return Self::resolv_conf(RESOLV_CONF).unwrap_or_else(|why| Self::Unavailable {
                why: format!("systemd-resolved is not running and {why}"),
            });
        }
        let found = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("resolvectl"))
                .find(|p| p.is_file())
        });
        match found {
            Some(bin) => Self::Resolvectl(bin),
            None => Self::Unavailable {
                why: "systemd-resolved is running but resolvectl is not on PATH".into(),
            },
        }
    }
}

impl SplitDns {
    /// `ResolvConf` for `path` when it is a plain file; else why not.
    pub fn resolv_conf(path: impl AsRef<Path>) -> Result<Self, String> {
        let path = path.as_ref();
        ResolvConf::manageable(path)?;
        Ok(Self::ResolvConf(ResolvConf::new(path)))
    }
}

/// The addresses, masked routes (exclusions carved out), MTU and DNS `settings` ask for.
pub fn plan(settings: &NetworkSettings) -> Plan {
    let mut addrs = BTreeSet::new();
    let mut routes = BTreeSet::new();
    for family in [&settings.ipv4, &settings.ipv6].into_iter().flatten() {
        addrs.extend(family.addrs.iter().copied());
        let excluded: Vec<IpNet> = family
            .excluded_routes
            .iter()
            .map(|r| r.destination.trunc())
            .collect();
        for route in &family.included_routes {
            for destination in subtract(route.destination.trunc(), &excluded) {
                routes.insert(Route {
                    destination,
                    gateway: route.gateway,
                });
            }
        }
    }
    Plan {
        mtu: settings.mtu,
        addrs,
        routes,
        dns: settings.dns.clone(),
    }
}

/// `net` minus every prefix in `excluded`, as the fewest prefixes (in address order).
pub fn subtract(net: IpNet, excluded: &[IpNet]) -> Vec<IpNet> {
    if excluded.iter().any(|e| e.contains(&net)) {
        return Vec::new();
    }
    let inside: Vec<IpNet> = excluded
        .iter()
        .copied()
        .filter(|e| net.contains(e))
        .collect();
    if inside.is_empty() {
        return vec![net];
    }
    let Ok(halves) = net.subnets(net.prefix_len() + 1) else {
        return Vec::new(); // a host prefix: `inside` holds it, so nothing is left
    };
    halves.flat_map(|half| subtract(half, &inside)).collect()
}

/// The `resolvectl` argument lists that configure split DNS for `dns` on `interface`.
///
/// Match domains become routing domains: `~coder` when `match_domains_no_search`, else
/// `coder` (routing and search, as macOS adds match domains to the search list unless told
/// not to). Search domains become plain domains. No match domains means every query goes
/// to these servers (`~.`, default route), as on macOS.
pub fn resolvectl_commands(interface: &str, dns: &Dns) -> Vec<Vec<String>> {
    let mut domains: Vec<String> = Vec::new();
    let mut push = |d: String| {
        if !domains.contains(&d) {
            domains.push(d);
        }
    };
    for m in &dns.match_domains {
        let m = m.trim_end_matches('.');
        match (m.is_empty(), dns.match_domains_no_search) {
            (true, _) => push("~.".into()),
            (false, true) => push(format!("~{m}")),
            (false, false) => push(m.to_owned()),
        }
    }
    let default_route = dns.match_domains.is_empty();
    if default_route {
        push("~.".into());
    }
    for s in &dns.search_domains {
        push(s.trim_end_matches('.').to_owned());
    }
    let mut dns_cmd = vec!["dns".to_owned(), interface.to_owned()];
    dns_cmd.extend(dns.servers.iter().map(IpAddr::to_string));
    let mut domain_cmd = vec!["domain".to_owned(), interface.to_owned()];
    domain_cmd.extend(domains);
    let default_route_cmd = vec![
        "default-route".to_owned(),
        interface.to_owned(),
        if default_route { "yes" } else { "no" }.to_owned(),
    ];
    vec![dns_cmd, domain_cmd, default_route_cmd]
}

/// The WARN logged when split DNS cannot be configured.
pub fn missing_resolver_message(why: &str, dns: &Dns) -> String {
    let servers = dns
        .servers
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let domains: Vec<&str> = dns
        .match_domains
        .iter()
        .map(|d| d.trim_end_matches('.'))
        .collect();
    if domains.is_empty() {
        return format!(
            "{why}; DNS queries will not go through the tunnel; point your resolver at {servers}"
        );
    }
    let under = domains
        .iter()
        .map(|d| format!(".{d}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{why}; names under {under} will not resolve through the tunnel; point your resolver at {servers} for the domain {}",
        domains.join(", ")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::settings::merge::IpSettings;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn route(s: &str) -> Route {
        Route {
            destination: net(s),
            gateway: None,
        }
    }

    fn coder_dns() -> Dns {
        Dns {
            servers: vec!["fd60:627a:a42b::53".parse().unwrap()],
            search_domains: vec![],
            domain_name: "coder".into(),
            match_domains: vec!["coder".into()],
            match_domains_no_search: false,
        }
    }

    #[test]
    fn plan_masks_route_destinations() {
        let settings = NetworkSettings {
            ipv4: Some(IpSettings {
                addrs: vec![net("100.64.0.1/32")],
                included_routes: vec![route("192.168.0.7/24")],
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = plan(&settings);
        assert_eq!(p.routes, BTreeSet::from([route("192.168.0.0/24")]));
        assert_eq!(p.addrs, BTreeSet::from([net("100.64.0.1/32")]));
    }

    #[test]
    fn excluded_route_is_carved_out_of_included_route() {
        let got = subtract(net("10.0.0.0/8"), &[net("10.1.0.0/16")]);
        let want: Vec<IpNet> = [
            "10.0.0.0/16",
            "10.2.0.0/15",
            "10.4.0.0/14",
            "10.8.0.0/13",
            "10.16.0.0/12",
            "10.32.0.0/11",
            "10.64.0.0/10",
            "10.128.0.0/9",
        ]
        .iter()
        .map(|s| net(s))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn excluded_route_covering_included_route_removes_it() {
        assert!(subtract(net("fd60:627a:a42b::/48"), &[net("fd60::/16")]).is_empty());
    }

    #[test]
    fn excluded_route_outside_included_route_changes_nothing() {
        assert_eq!(
            subtract(net("fd60:627a:a42b::/48"), &[net("2001:db8::/32")]),
            vec![net("fd60:627a:a42b::/48")]
        );
    }

    #[test]
    fn excluded_host_leaves_one_prefix_per_bit() {
        let got = subtract(net("fd60:627a:a42b::/48"), &[net("fd60:627a:a42b::1/128")]);
        assert_eq!(got.len(), 80);
        assert!(
            !got.iter()
                .any(|n| n.contains(&net("fd60:627a:a42b::1/128")))
        );
        assert!(
            got.iter()
                .any(|n| n.contains(&net("fd60:627a:a42b::2/128")))
        );
    }

    #[test]
    fn resolvectl_match_domain_searches_unless_no_search() {
        let cmds = resolvectl_commands("coder0", &coder_dns());
        assert_eq!(
            cmds,
            vec![
                vec!["dns", "coder0", "fd60:627a:a42b::53"],
                vec!["domain", "coder0", "coder"],
                vec!["default-route", "coder0", "no"],
            ]
        );
        let dns = Dns {
            match_domains_no_search: true,
            search_domains: vec!["example.com.".into()],
            ..coder_dns()
        };
        assert_eq!(
            resolvectl_commands("coder0", &dns)[1],
            vec!["domain", "coder0", "~coder", "example.com"]
        );
    }

    #[test]
    fn resolvectl_without_match_domains_takes_all_queries() {
        let dns = Dns {
            match_domains: vec![],
            ..coder_dns()
        };
        let cmds = resolvectl_commands("coder0", &dns);
        assert_eq!(cmds[1], vec!["domain", "coder0", "~."]);
        assert_eq!(cmds[2], vec!["default-route", "coder0", "yes"]);
    }

    #[test]
    fn missing_resolver_warning_names_server_and_domain() {
        assert_eq!(
            missing_resolver_message("systemd-resolved is not running", &coder_dns()),
            "systemd-resolved is not running; names under .coder will not resolve through the \
             tunnel; point your resolver at fd60:627a:a42b::53 for the domain coder"
        );
    }
}
