//! The `NetworkSettingsRequest`s a tunnel sends (codervpn-protocol.md §8): one from the
//! router (address, route, MTU), one from DNS (server, match domains). Each is partial.

use std::net::Ipv6Addr;

use codervpn_dns::{CODER_DNS_ADDR, ZoneConfig};
use codervpn_proto::vpn::NetworkSettingsRequest;
use codervpn_proto::vpn::network_settings_request::{
    DnsSettings, IPv6Settings as Ipv6Settings, i_pv6_settings::IPv6Route as Ipv6Route,
};

/// The route every Coder agent address lives in.
pub const CODER_ROUTE: (Ipv6Addr, u32) = (Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 0, 0, 0, 0, 0), 48);
/// MTU of the tunnel device.
pub const TUNNEL_MTU: u32 = 1280;

/// §8.1: our `/128`, the route to `fd60:627a:a42b::/48`, the MTU.
pub fn router(self_addr: Ipv6Addr, mtu: u32) -> NetworkSettingsRequest {
    NetworkSettingsRequest {
        tunnel_overhead_bytes: 0,
        mtu,
        dns_settings: None,
        tunnel_remote_address: String::new(),
        ipv4_settings: None,
        ipv6_settings: Some(Ipv6Settings {
            addrs: vec![self_addr.to_string()],
            prefix_lengths: vec![128],
            included_routes: vec![Ipv6Route {
                destination: CODER_ROUTE.0.to_string(),
                prefix_length: CODER_ROUTE.1,
                router: String::new(),
            }],
            excluded_routes: Vec::new(),
        }),
    }
}

/// §8.2: the in-tunnel resolver for the deployment suffix and every alias (split DNS).
pub fn dns(zone: &ZoneConfig) -> NetworkSettingsRequest {
    NetworkSettingsRequest {
        dns_settings: Some(DnsSettings {
            servers: vec![CODER_DNS_ADDR.to_string()],
            search_domains: Vec::new(),
            domain_name: zone.suffix().to_owned(),
            match_domains: zone.served_suffixes().map(str::to_owned).collect(),
            match_domains_no_search: false,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_settings_carry_self_128_the_coder_route_and_mtu_only() {
        let me: Ipv6Addr = "fd60:627a:a42b:1:2:3:4:5".parse().unwrap();
        let r = router(me, 1280);
        assert_eq!(r.mtu, 1280);
        assert!(r.dns_settings.is_none() && r.ipv4_settings.is_none());
        assert_eq!(r.tunnel_remote_address, "");
        let v6 = r.ipv6_settings.unwrap();
        assert_eq!(v6.addrs, ["fd60:627a:a42b:1:2:3:4:5"]);
        assert_eq!(v6.prefix_lengths, [128]);
        assert_eq!(v6.included_routes.len(), 1);
        assert_eq!(v6.included_routes[0].destination, "fd60:627a:a42b::");
        assert_eq!(v6.included_routes[0].prefix_length, 48);
        assert!(v6.excluded_routes.is_empty());
    }

    #[test]
    fn dns_settings_match_every_served_suffix_without_dots() {
        let d = dns(&ZoneConfig::new("float").unwrap())
            .dns_settings
            .unwrap();
        assert_eq!(d.servers, ["fd60:627a:a42b::53"]);
        assert_eq!(d.domain_name, "float");
        assert_eq!(d.match_domains, ["float", "coderlan"]);
        assert!(d.search_domains.is_empty() && !d.match_domains_no_search);
        let d = dns(&ZoneConfig::new("").unwrap().without_aliases())
            .dns_settings
            .unwrap();
        assert_eq!(d.match_domains, ["coder"]);
    }
}
