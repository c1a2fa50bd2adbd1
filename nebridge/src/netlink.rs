//! Linux interface configuration over rtnetlink: addresses, MTU, link state, routes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, RouteMessageBuilder};

/// A netlink connection (its driver runs on the current tokio runtime).
pub struct Netlink {
    handle: Handle,
}

/// A failed netlink operation; `what` names the operation and its object.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] io::Error),
    #[error("interface {name} not found")]
    NoSuchInterface { name: String },
    #[error("{what}: {}", describe(.source))]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

impl NetlinkError {
    /// The kernel's errno for a refused request (`libc::EEXIST`, `libc::ENODEV`, …).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request {
                source: rtnetlink::Error::NetlinkError(e),
                ..
            } => Some(e.raw_code().abs()),
            Self::Request { .. } | Self::Connect(_) | Self::NoSuchInterface { .. } => None,
        }
    }
}

fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

fn request(what: impl FnOnce() -> String) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError::Request {
        what: what(),
        source,
    }
}

impl Netlink {
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link_index(&self, name: &str) -> Result<u32, NetlinkError> {
        self.find_link(name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchInterface {
                name: name.to_owned(),
            })
    }

    /// The index of interface `name`, or `None` when there is no such interface.
    pub async fn find_link(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
                Ok(None)
            }
            Err(e) => Err(request(|| format!("looking up interface {name}"))(e)),
        }
    }

    pub async fn set_mtu_and_up(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set_link(index, Some(mtu)).await
    }

    /// Sets the link up, and its MTU when `mtu` is given.
    pub async fn set_link(&self, index: u32, mtu: Option<u32>) -> Result<(), NetlinkError> {
        let mut msg = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(request(|| match mtu {
                Some(mtu) => format!("setting MTU {mtu} and link up on interface #{index}"),
                None => format!("setting link up on interface #{index}"),
            }))
    }

    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .execute()
            .await
            .map_err(request(|| {
                format!("adding address {net} to interface #{index}")
            }))
    }

    pub async fn del_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let msg = match net.addr() {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(a, net.prefix_len())
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(a, net.prefix_len())
                .build(),
        };
        self.handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(request(|| {
                format!("removing address {net} from interface #{index}")
            }))
    }

    /// Adds a route to `net` (masked to its prefix) out of interface `index`.
    pub async fn add_route(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        self.add_route_via(index, net, None).await
    }

    /// Adds a route to `net` (masked) out of interface `index`, through `gateway` if given.
    pub async fn add_route_via(
        &self,
        index: u32,
        net: IpNet,
        gateway: Option<IpAddr>,
    ) -> Result<(), NetlinkError> {
        let (msg, what) = route_request("adding", index, net, gateway)?;
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(request(|| what))
    }

    /// Removes the route [`Netlink::add_route_via`] added.
    pub async fn del_route_via(
        &self,
        index: u32,
        net: IpNet,
        gateway: Option<IpAddr>,
    ) -> Result<(), NetlinkError> {
        let (msg, what) = route_request("removing", index, net, gateway)?;
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(request(|| what))
    }
}

/// The message for a route to `net` (masked) out of `index`, and its description.
fn route_request(
    verb: &str,
    index: u32,
    net: IpNet,
    gateway: Option<IpAddr>,
) -> Result<(RouteMessage, String), NetlinkError> {
    let net = net.trunc();
    let via = gateway.map(|g| format!(" gateway {g}")).unwrap_or_default();
    let what = format!("{verb} route {net}{via} via interface #{index}");
    match route_message(index, net, gateway) {
        Ok(msg) => Ok((msg, what)),
        Err(source) => Err(NetlinkError::Request { what, source }),
    }
}

fn route_message(
    index: u32,
    net: IpNet,
    gateway: Option<IpAddr>,
) -> Result<RouteMessage, rtnetlink::Error> {
    let invalid = |e| rtnetlink::Error::InvalidNla(format!("{e}"));
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(net.addr(), net.prefix_len())
        .map_err(invalid)?
        .output_interface(index);
    if let Some(g) = gateway {
        b = b.gateway(g).map_err(invalid)?;
    }
    Ok(b.build())
}
