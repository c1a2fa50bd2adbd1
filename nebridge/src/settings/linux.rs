//! Applying merged [`NetworkSettings`] to a Linux TUN interface: addresses, MTU, link up and
//! routes over rtnetlink; split DNS through whichever backend [`SplitDns`] found
//! (systemd-resolved, `resolvconf(8)`, or `/etc/resolv.conf` managed directly).
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
//! - Split DNS goes through [`SplitDns`] (see `super::split_dns` for the choice); when
//!   nothing can be done it logs one WARN saying what will not resolve.
//! - Every apply is a diff against what the previous one installed; [`LinuxNetworkConfig::teardown`]
//!   removes all of it. The MTU and the link state are left as they are: the interface
//!   belongs to the tunnel.

use std::time::Instant;

use futures_util::future::BoxFuture;
use ipnet::IpNet;
use tracing::{debug, warn};

use super::HostNetwork;
use super::merge::{Dns, NetworkSettings, Route};
use super::plan::{Plan, plan};
use super::reassert::{self, Verdict, Watch};
use super::resolvconf::owner_pid;
use super::split_dns::{DnsError, SplitDns};
use super::tool::ToolError;
use crate::netlink::{Netlink, NetlinkError};

/// The settings applied to one interface, and how to undo them.
pub struct LinuxNetworkConfig {
    interface: String,
    netlink: Netlink,
    split_dns: SplitDns,
    /// What the last apply installed, and on which interface index.
    applied: Plan,
    applied_index: Option<u32>,
    /// Over a directly managed resolv.conf: someone else rewriting it.
    watch: Watch,
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
    #[error("interface {interface}: DNS: {source}")]
    Dns {
        interface: String,
        #[source]
        source: DnsError,
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
        if let Err(source) = split_dns.recover() {
            return Err(ApplyError::Dns { interface, source });
        }
        Ok(Self {
            interface,
            netlink,
            split_dns,
            applied: Plan::default(),
            applied_index: None,
            watch: Watch::new(),
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
            self.watch.reset();
        }
        Ok(())
    }

    /// Called every [`reassert::CHECK_EVERY`]: a directly managed resolv.conf another
    /// program rewrote gets the tunnel's resolver first again (see [`reassert`]).
    pub async fn recheck(&mut self) -> Result<(), ApplyError> {
        let (SplitDns::ResolvConf(rc), Some(dns)) = (&self.split_dns, &self.applied.dns) else {
            return Ok(());
        };
        if dns.servers.is_empty() {
            return Ok(());
        }
        let Ok(current) = std::fs::read(rc.path()) else {
            return Ok(());
        };
        let ours = owner_pid(&current) == Some(std::process::id());
        match self.watch.observe(Instant::now(), &current, ours) {
            Verdict::Fine | Verdict::Wait => Ok(()),
            Verdict::Reassert => {
                warn!(path = %rc.path().display(), "another program rewrote it while the tunnel ran: the tunnel's resolver is first again (exit restores the new file)");
                let (rc, dns) = (rc.clone(), dns.clone());
                self.blocking(move || Ok(rc.apply(&dns)?)).await
            }
            Verdict::GiveUp => {
                warn!(path = %rc.path().display(), max = reassert::MAX_REASSERTS, "another program keeps rewriting it: left to it; workspace names may not resolve through the system resolver");
                Ok(())
            }
        }
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
        let Some(dns) = dns.filter(|d| !d.servers.is_empty()).cloned() else {
            return self.revert_dns().await;
        };
        let (split_dns, interface) = (self.split_dns.clone(), self.interface.clone());
        self.blocking(move || split_dns.apply(&interface, &dns))
            .await
    }

    async fn revert_dns(&self) -> Result<(), ApplyError> {
        let (split_dns, interface) = (self.split_dns.clone(), self.interface.clone());
        self.blocking(move || split_dns.revert(&interface)).await
    }

    /// Runs a DNS backend's blocking call off the runtime's threads.
    async fn blocking(
        &self,
        call: impl FnOnce() -> Result<(), DnsError> + Send + 'static,
    ) -> Result<(), ApplyError> {
        let source = match tokio::task::spawn_blocking(call).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(source)) => source,
            Err(e) => DnsError::Tool(ToolError {
                command: "(DNS backend task)".into(),
                detail: e.to_string(),
            }),
        };
        Err(ApplyError::Dns {
            interface: self.interface.clone(),
            source,
        })
    }

    fn err(&self, source: NetlinkError) -> ApplyError {
        ApplyError::Netlink {
            interface: self.interface.clone(),
            source,
        }
    }
}

impl HostNetwork for LinuxNetworkConfig {
    fn interface(&self) -> &str {
        LinuxNetworkConfig::interface(self)
    }

    fn apply<'a>(&'a mut self, settings: &'a NetworkSettings) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            LinuxNetworkConfig::apply(self, settings)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn teardown(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            LinuxNetworkConfig::teardown(self)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn recheck(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            LinuxNetworkConfig::recheck(self)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
