//! Network settings from the tunnel: the merge model (sans-IO) and the Linux backend.

pub mod linux;
pub mod merge;
pub mod resolvconf;

pub use linux::{ApplyError, LinuxNetworkConfig, Plan, SplitDns};
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
