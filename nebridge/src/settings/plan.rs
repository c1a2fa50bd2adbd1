//! What the host should hold for some merged [`NetworkSettings`] (addresses, routes with
//! the exclusions carved out, MTU, DNS), computed without touching the host: every OS
//! backend (Linux's netlink, macOS's `ifconfig`/`route`) diffs two of these.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::merge::{Dns, NetworkSettings, Route};

/// What the kernel and the resolver should hold for some settings. Pure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub mtu: Option<u32>,
    pub addrs: BTreeSet<IpNet>,
    /// Masked destinations with their gateway, exclusions already carved out.
    pub routes: BTreeSet<Route>,
    pub dns: Option<Dns>,
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
}
