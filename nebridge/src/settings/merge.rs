//! The manager's current network settings and the merge of each `NetworkSettingsRequest`
//! into them (manager-behaviour.md §5). Sans-IO: parsing and merging only.
//!
//! Every request is a partial diff: a present section replaces the current one entirely, an
//! absent section keeps it, and `mtu == 0` keeps the current MTU. A section can be replaced
//! but never removed. `tunnel_overhead_bytes` and `tunnel_remote_address` are ignored.

use std::net::{IpAddr, Ipv4Addr};

use codervpn_proto::vpn::NetworkSettingsRequest;
use codervpn_proto::vpn::network_settings_request::i_pv4_settings::IPv4Route;
use codervpn_proto::vpn::network_settings_request::i_pv6_settings::IPv6Route;
use codervpn_proto::vpn::network_settings_request::{DnsSettings, IPv4Settings, IPv6Settings};
use ipnet::IpNet;

/// The merged settings the host applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkSettings {
    /// `None` until a request carries a non-zero MTU.
    pub mtu: Option<u32>,
    pub dns: Option<Dns>,
    pub ipv4: Option<IpSettings>,
    pub ipv6: Option<IpSettings>,
}

/// The DNS section, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<IpAddr>,
    pub search_domains: Vec<String>,
    pub domain_name: String,
    pub match_domains: Vec<String>,
    pub match_domains_no_search: bool,
}

/// One address family's section, parsed: addresses with their prefix lengths (the host
/// part kept as sent) and routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpSettings {
    pub addrs: Vec<IpNet>,
    /// IPv4 only, and only when the request's `router` is non-empty.
    pub router: Option<IpAddr>,
    pub included_routes: Vec<Route>,
    pub excluded_routes: Vec<Route>,
}

/// A route: the destination as sent (not masked) and a gateway only when the request's
/// `router` is non-empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
}

/// A request the host cannot apply; the current settings stay as they were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSettings {
    #[error("{section}: {field} {value:?} is not an {family} address")]
    Address {
        section: &'static str,
        field: &'static str,
        family: &'static str,
        value: String,
    },
    #[error("{section}: {field} {value:?} is not a contiguous dotted-quad subnet mask")]
    Mask {
        section: &'static str,
        field: &'static str,
        value: String,
    },
    #[error("{section}: prefix length {len} is out of range for {addr}")]
    PrefixLength {
        section: &'static str,
        addr: IpAddr,
        len: u32,
    },
    #[error("{section}: {addrs} addresses but {prefixes} {prefix_field}")]
    CountMismatch {
        section: &'static str,
        addrs: usize,
        prefixes: usize,
        prefix_field: &'static str,
    },
}

impl NetworkSettings {
    /// The settings after merging `req` (manager-behaviour.md §5), or why `req` is invalid.
    /// `self` is not changed, so a failed apply can keep the previous settings.
    pub fn merged(&self, req: &NetworkSettingsRequest) -> Result<Self, InvalidSettings> {
        let mut next = self.clone();
        if req.mtu != 0 {
            next.mtu = Some(req.mtu);
        }
        if let Some(dns) = &req.dns_settings {
            next.dns = Some(parse_dns(dns)?);
        }
        if let Some(v4) = &req.ipv4_settings {
            next.ipv4 = Some(parse_ipv4(v4)?);
        }
        if let Some(v6) = &req.ipv6_settings {
            next.ipv6 = Some(parse_ipv6(v6)?);
        }
        Ok(next)
    }
}

const DNS: &str = "dns_settings";
const V4: &str = "ipv4_settings";
const V6: &str = "ipv6_settings";

fn parse_dns(dns: &DnsSettings) -> Result<Dns, InvalidSettings> {
    let servers = dns
        .servers
        .iter()
        .map(|s| addr_of(DNS, "IP", |_| true, "server", s))
        .collect::<Result<_, _>>()?;
    Ok(Dns {
        servers,
        search_domains: dns.search_domains.clone(),
        domain_name: dns.domain_name.clone(),
        match_domains: dns.match_domains.clone(),
        match_domains_no_search: dns.match_domains_no_search,
    })
}

fn parse_ipv4(v4: &IPv4Settings) -> Result<IpSettings, InvalidSettings> {
    same_count(V4, v4.addrs.len(), v4.subnet_masks.len(), "subnet_masks")?;
    let addrs = v4
        .addrs
        .iter()
        .zip(&v4.subnet_masks)
        .map(|(a, m)| prefix(V4, v4_addr("addr", a)?, mask_len("subnet_mask", m)?))
        .collect::<Result<_, _>>()?;
    let route = |r: &IPv4Route| {
        Ok(Route {
            destination: prefix(
                V4,
                v4_addr("route destination", &r.destination)?,
                mask_len("route mask", &r.mask)?,
            )?,
            gateway: optional(&r.router, |s| v4_addr("route router", s))?,
        })
    };
    Ok(IpSettings {
        addrs,
        router: optional(&v4.router, |s| v4_addr("router", s))?,
        included_routes: all(&v4.included_routes, route)?,
        excluded_routes: all(&v4.excluded_routes, route)?,
    })
}

fn parse_ipv6(v6: &IPv6Settings) -> Result<IpSettings, InvalidSettings> {
    same_count(
        V6,
        v6.addrs.len(),
        v6.prefix_lengths.len(),
        "prefix_lengths",
    )?;
    let addrs = v6
        .addrs
        .iter()
        .zip(&v6.prefix_lengths)
        .map(|(a, &len)| prefix(V6, v6_addr("addr", a)?, len))
        .collect::<Result<_, _>>()?;
    let route = |r: &IPv6Route| {
        Ok(Route {
            destination: prefix(
                V6,
                v6_addr("route destination", &r.destination)?,
                r.prefix_length,
            )?,
            gateway: optional(&r.router, |s| v6_addr("route router", s))?,
        })
    };
    Ok(IpSettings {
        addrs,
        router: None,
        included_routes: all(&v6.included_routes, route)?,
        excluded_routes: all(&v6.excluded_routes, route)?,
    })
}

fn all<T>(
    items: &[T],
    parse: impl Fn(&T) -> Result<Route, InvalidSettings>,
) -> Result<Vec<Route>, InvalidSettings> {
    items.iter().map(parse).collect()
}

fn same_count(
    section: &'static str,
    addrs: usize,
    prefixes: usize,
    prefix_field: &'static str,
) -> Result<(), InvalidSettings> {
    if addrs == prefixes {
        return Ok(());
    }
    Err(InvalidSettings::CountMismatch {
        section,
        addrs,
        prefixes,
        prefix_field,
    })
}

fn prefix(section: &'static str, addr: IpAddr, len: u32) -> Result<IpNet, InvalidSettings> {
    u8::try_from(len)
        .ok()
        .and_then(|l| IpNet::new(addr, l).ok())
        .ok_or(InvalidSettings::PrefixLength { section, addr, len })
}

/// `None` for an empty string, else the parsed value.
fn optional(
    s: &str,
    parse: impl FnOnce(&str) -> Result<IpAddr, InvalidSettings>,
) -> Result<Option<IpAddr>, InvalidSettings> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse(s).map(Some)
    }
}

fn v4_addr(field: &'static str, s: &str) -> Result<IpAddr, InvalidSettings> {
    addr_of(V4, "IPv4", IpAddr::is_ipv4, field, s)
}

fn v6_addr(field: &'static str, s: &str) -> Result<IpAddr, InvalidSettings> {
    addr_of(V6, "IPv6", IpAddr::is_ipv6, field, s)
}

/// `s` as an address of the family `is` accepts.
fn addr_of(
    section: &'static str,
    family: &'static str,
    is: fn(&IpAddr) -> bool,
    field: &'static str,
    s: &str,
) -> Result<IpAddr, InvalidSettings> {
    s.parse::<IpAddr>()
        .ok()
        .filter(is)
        .ok_or_else(|| InvalidSettings::Address {
            section,
            field,
            family,
            value: s.to_owned(),
        })
}

/// Prefix length of a dotted-quad mask such as `255.255.255.0`.
fn mask_len(field: &'static str, s: &str) -> Result<u32, InvalidSettings> {
    let bad = || InvalidSettings::Mask {
        section: V4,
        field,
        value: s.to_owned(),
    };
    let bits = u32::from(s.parse::<Ipv4Addr>().map_err(|_| bad())?);
    let len = bits.leading_ones();
    if bits.checked_shl(len).unwrap_or(0) != 0 {
        return Err(bad());
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// The router-originated request of our tunnel (codervpn-protocol.md §8.1).
    fn router_request(addr: &str, mtu: u32) -> NetworkSettingsRequest {
        NetworkSettingsRequest {
            mtu,
            ipv6_settings: Some(IPv6Settings {
                addrs: vec![addr.into()],
                prefix_lengths: vec![128],
                included_routes: vec![IPv6Route {
                    destination: "fd60:627a:a42b::".into(),
                    prefix_length: 48,
                    router: String::new(),
                }],
                excluded_routes: vec![],
            }),
            ..Default::default()
        }
    }

    /// The DNS-originated request (codervpn-protocol.md §8.2).
    fn dns_request() -> NetworkSettingsRequest {
        NetworkSettingsRequest {
            dns_settings: Some(DnsSettings {
                servers: vec!["fd60:627a:a42b::53".into()],
                search_domains: vec![],
                domain_name: "coder".into(),
                match_domains: vec!["coder".into()],
                match_domains_no_search: false,
            }),
            ..Default::default()
        }
    }

    fn v4_request(router: &str, route_router: &str) -> NetworkSettingsRequest {
        NetworkSettingsRequest {
            ipv4_settings: Some(IPv4Settings {
                addrs: vec!["100.64.0.1".into()],
                subnet_masks: vec!["255.255.255.255".into()],
                router: router.into(),
                included_routes: vec![IPv4Route {
                    destination: "192.168.0.7".into(),
                    mask: "255.255.255.0".into(),
                    router: route_router.into(),
                }],
                excluded_routes: vec![IPv4Route {
                    destination: "10.0.0.0".into(),
                    mask: "255.0.0.0".into(),
                    router: String::new(),
                }],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ipv6_section_parses_addresses_and_routes() {
        let s = NetworkSettings::default()
            .merged(&router_request("fd60:627a:a42b::1", 1280))
            .unwrap();
        assert_eq!(s.mtu, Some(1280));
        let v6 = s.ipv6.unwrap();
        assert_eq!(v6.addrs, vec![net("fd60:627a:a42b::1/128")]);
        assert_eq!(
            v6.included_routes,
            vec![Route {
                destination: net("fd60:627a:a42b::/48"),
                gateway: None
            }]
        );
        assert!(s.dns.is_none() && s.ipv4.is_none());
    }

    #[test]
    fn mtu_zero_keeps_current_mtu() {
        let s = NetworkSettings::default()
            .merged(&router_request("fd60:627a:a42b::1", 1280))
            .unwrap();
        let s = s.merged(&router_request("fd60:627a:a42b::2", 0)).unwrap();
        assert_eq!(s.mtu, Some(1280));
    }

    #[test]
    fn nonzero_mtu_replaces_mtu() {
        let s = NetworkSettings::default()
            .merged(&router_request("fd60:627a:a42b::1", 1280))
            .unwrap();
        let s = s
            .merged(&router_request("fd60:627a:a42b::1", 1200))
            .unwrap();
        assert_eq!(s.mtu, Some(1200));
    }

    #[test]
    fn absent_dns_keeps_current_dns() {
        let s = NetworkSettings::default().merged(&dns_request()).unwrap();
        let s = s
            .merged(&router_request("fd60:627a:a42b::1", 1280))
            .unwrap();
        assert_eq!(s.dns.unwrap().match_domains, vec!["coder".to_owned()]);
    }

    #[test]
    fn present_dns_replaces_dns_entirely() {
        let s = NetworkSettings::default().merged(&dns_request()).unwrap();
        let mut req = dns_request();
        let dns = req.dns_settings.as_mut().unwrap();
        dns.servers = vec!["1.1.1.1".into()];
        dns.match_domains = vec![];
        dns.domain_name = String::new();
        dns.search_domains = vec!["example.com".into()];
        let s = s.merged(&req).unwrap();
        assert_eq!(
            s.dns,
            Some(Dns {
                servers: vec!["1.1.1.1".parse().unwrap()],
                search_domains: vec!["example.com".into()],
                domain_name: String::new(),
                match_domains: vec![],
                match_domains_no_search: false,
            })
        );
    }

    #[test]
    fn dns_and_routes_merge_in_either_order() {
        let a = NetworkSettings::default()
            .merged(&dns_request())
            .unwrap()
            .merged(&router_request("fd60:627a:a42b::1", 1280))
            .unwrap();
        let b = NetworkSettings::default()
            .merged(&router_request("fd60:627a:a42b::1", 1280))
            .unwrap()
            .merged(&dns_request())
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn absent_ip_sections_keep_current() {
        let s = NetworkSettings::default()
            .merged(&router_request("fd60:627a:a42b::1", 1280))
            .unwrap()
            .merged(&v4_request("", ""))
            .unwrap();
        let s2 = s.merged(&dns_request()).unwrap();
        assert_eq!(s2.ipv4, s.ipv4);
        assert_eq!(s2.ipv6, s.ipv6);
    }

    #[test]
    fn present_ipv6_section_replaces_ipv6_even_when_empty() {
        let s = NetworkSettings::default()
            .merged(&router_request("fd60:627a:a42b::1", 1280))
            .unwrap();
        let req = NetworkSettingsRequest {
            ipv6_settings: Some(IPv6Settings::default()),
            ..Default::default()
        };
        assert_eq!(s.merged(&req).unwrap().ipv6, Some(IpSettings::default()));
    }

    #[test]
    fn ipv4_router_only_when_nonempty() {
        let s = NetworkSettings::default()
            .merged(&v4_request("", ""))
            .unwrap();
        assert_eq!(s.ipv4.unwrap().router, None);
        let s = NetworkSettings::default()
            .merged(&v4_request("100.64.0.254", ""))
            .unwrap();
        assert_eq!(
            s.ipv4.unwrap().router,
            Some("100.64.0.254".parse().unwrap())
        );
    }

    #[test]
    fn ipv4_masks_become_prefix_lengths_and_destinations_stay_unmasked() {
        // Upstream: coder/coder vpn/router_internal_test.go TestConvertRouterConfig (reversed).
        let v4 = NetworkSettings::default()
            .merged(&v4_request("", ""))
            .unwrap()
            .ipv4
            .unwrap();
        assert_eq!(v4.addrs, vec![net("100.64.0.1/32")]);
        assert_eq!(
            v4.included_routes,
            vec![Route {
                destination: net("192.168.0.7/24"),
                gateway: None
            }]
        );
        assert_eq!(v4.excluded_routes[0].destination, net("10.0.0.0/8"));
    }

    #[test]
    fn route_gateway_only_when_route_router_nonempty() {
        let v4 = NetworkSettings::default()
            .merged(&v4_request("", "100.64.0.254"))
            .unwrap()
            .ipv4
            .unwrap();
        assert_eq!(
            v4.included_routes[0].gateway,
            Some("100.64.0.254".parse().unwrap())
        );
    }

    #[test]
    fn tunnel_overhead_and_remote_address_are_ignored() {
        let req = NetworkSettingsRequest {
            tunnel_overhead_bytes: 80,
            tunnel_remote_address: "192.0.2.1".into(),
            ..Default::default()
        };
        let s = NetworkSettings::default().merged(&req).unwrap();
        assert_eq!(s, NetworkSettings::default());
    }

    #[test]
    fn invalid_request_is_rejected_and_names_the_field() {
        let mut req = v4_request("", "");
        req.ipv4_settings.as_mut().unwrap().subnet_masks = vec!["255.0.255.0".into()];
        let err = NetworkSettings::default().merged(&req).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ipv4_settings: subnet_mask \"255.0.255.0\" is not a contiguous dotted-quad subnet mask"
        );
        let mut req = router_request("fd60::1", 1280);
        req.ipv6_settings.as_mut().unwrap().prefix_lengths = vec![129];
        assert!(matches!(
            NetworkSettings::default().merged(&req),
            Err(InvalidSettings::PrefixLength { len: 129, .. })
        ));
        let mut req = router_request("100.64.0.1", 1280);
        req.ipv6_settings.as_mut().unwrap().prefix_lengths = vec![];
        assert!(matches!(
            NetworkSettings::default().merged(&req),
            Err(InvalidSettings::CountMismatch { .. })
        ));
    }

    #[test]
    fn invalid_request_leaves_current_settings_unchanged() {
        let s = NetworkSettings::default().merged(&dns_request()).unwrap();
        let mut bad = router_request("not-an-address", 1400);
        bad.dns_settings = Some(DnsSettings::default());
        assert!(s.merged(&bad).is_err());
        assert_eq!(
            s,
            NetworkSettings::default().merged(&dns_request()).unwrap()
        );
    }
}
