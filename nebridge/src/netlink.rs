//! Linux interface configuration over rtnetlink: addresses, MTU, link state, routes.

use std::net::IpAddr;

use anyhow::{Context, anyhow};
use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// A netlink connection (its driver runs on the current tokio runtime).
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    pub fn connect() -> anyhow::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link_index(&self, name: &str) -> anyhow::Result<u32> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let link = links
            .try_next()
            .await
            .with_context(|| format!("looking up interface {name}"))?
            .ok_or_else(|| anyhow!("interface {name} not found"))?;
        Ok(link.header.index)
    }

    pub async fn set_mtu_and_up(&self, index: u32, mtu: u32) -> anyhow::Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .with_context(|| format!("setting MTU {mtu} and link up on interface #{index}"))
    }

    pub async fn add_address(&self, index: u32, net: IpNet) -> anyhow::Result<()> {
        self.handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .execute()
            .await
            .with_context(|| format!("adding address {net} to interface #{index}"))
    }

    pub async fn add_route(&self, index: u32, net: IpNet) -> anyhow::Result<()> {
        let net = net.trunc();
        let msg = match net.addr() {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(a, net.prefix_len())
                .output_interface(index)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, net.prefix_len())
                .output_interface(index)
                .build(),
        };
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .with_context(|| format!("adding route {net} via interface #{index}"))
    }
}
