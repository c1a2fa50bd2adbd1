//! The one place `up` differs per OS: making the tunnel's interface and the backend that
//! applies the tunnel's network settings to it. Linux: a TUN (with offloads for our
//! engine) and netlink + systemd-resolved/resolv.conf. macOS: a utun and `ifconfig`/`route`
//! + `/etc/resolver` files (`codervpn-machost`; compiled, never run on a Mac, issue #15).

use std::os::fd::OwnedFd;

use anyhow::{Context, bail};
use codervpn_nebridge::settings::SharedConfig;
#[cfg(target_os = "macos")]
use codervpn_nebridge::settings::macos::MacNetworkConfig;
#[cfg(target_os = "linux")]
use codervpn_nebridge::settings::{LinuxNetworkConfig, SplitDns, resolvconf::RESOLV_CONF};

use super::DnsMode;

/// Creates the interface; returns its descriptor and name. `offload`: the reader takes
/// super packets (our engine; a compat tunnel gets bare packets).
#[cfg(target_os = "linux")]
pub fn open_tun(interface: &str, offload: bool) -> anyhow::Result<(OwnedFd, String)> {
    let (fd, name, _) = codervpn_engine::host::create_tun(interface, offload)
        .with_context(|| format!("creating TUN interface {interface}"))?;
    Ok((fd, name))
}

/// The settings backend for the interface `name`.
#[cfg(target_os = "linux")]
pub fn host_network(name: &str, dns: DnsMode) -> anyhow::Result<SharedConfig> {
    Ok(SharedConfig::new(LinuxNetworkConfig::with_split_dns(
        name.to_owned(),
        split_dns(dns)?,
    )?))
}

/// The split DNS backend `--dns` asks for.
#[cfg(target_os = "linux")]
fn split_dns(dns: DnsMode) -> anyhow::Result<SplitDns> {
    Ok(match dns {
        DnsMode::Auto => SplitDns::detect(),
        DnsMode::Resolved => match SplitDns::detect() {
            d @ SplitDns::Resolvectl(_) => d,
            _ => bail!(
                "--dns resolved: systemd-resolved is not running (or resolvectl is not on PATH)"
            ),
        },
        DnsMode::ResolvConf => SplitDns::resolv_conf(RESOLV_CONF)
            .map_err(|why| anyhow::anyhow!("--dns resolv-conf: {why}"))?,
        DnsMode::Resolvconf => {
            SplitDns::resolvconf().map_err(|why| anyhow::anyhow!("--dns resolvconf: {why}"))?
        }
        DnsMode::None => SplitDns::Unavailable {
            why: "--dns none".into(),
        },
    })
}

/// Creates a utun (the kernel names it: `--interface` must stay the default); its packets
/// carry utun's family prefix, which the engine reads for a handed-over descriptor.
#[cfg(target_os = "macos")]
pub fn open_tun(interface: &str, _offload: bool) -> anyhow::Result<(OwnedFd, String)> {
    if interface != super::DEFAULT_INTERFACE {
        bail!("--interface {interface}: on macOS the kernel names the utun; leave --interface out");
    }
    codervpn_machost::utun::create().context("creating a utun interface")
}

/// The settings backend for the utun `name`: `--dns auto` writes `/etc/resolver` files,
/// `--dns none` none; the other choices are Linux's.
#[cfg(target_os = "macos")]
pub fn host_network(name: &str, dns: DnsMode) -> anyhow::Result<SharedConfig> {
    let resolver_files = match dns {
        DnsMode::Auto => true,
        DnsMode::None => false,
        _ => bail!("--dns: on macOS only `auto` (/etc/resolver files) or `none`"),
    };
    Ok(SharedConfig::new(MacNetworkConfig::new(
        name,
        resolver_files,
    )))
}
