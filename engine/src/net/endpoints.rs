//! Our candidate endpoints for direct paths: every local interface address (`getifaddrs`)
//! with the UDP socket's port, minus those a peer can never use.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Every usable local interface address with `port`: no loopback (unless `loopback`, for
/// peers on the same host), no IPv6 link-local, no address in Coder's own range
/// (`fd60:627a:a42b::/48`, the tunnel's), no duplicates.
pub fn local_endpoints(port: u16, loopback: bool) -> io::Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = interface_addrs()?
        .into_iter()
        .filter(|ip| usable(*ip) || (loopback && ip.is_loopback()))
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whether a local address is worth advertising to peers.
pub fn usable(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let link_local = s[0] & 0xffc0 == 0xfe80;
            let coder = s[0] == 0xfd60 && s[1] == 0x627a && s[2] == 0xa42b;
            !link_local && !coder
        }
    }
}

/// The addresses of every interface that is up.
fn interface_addrs() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addrs = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let up = ifa.ifa_flags & libc::IFF_UP as libc::c_uint != 0;
        if !up || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it names.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        match family {
            libc::AF_INET => {
                // SAFETY: the family says this is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                addrs.push(IpAddr::V4(ip));
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                addrs.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_link_local_and_coder_addresses_are_not_advertised() {
        for bad in [
            "127.0.0.1",
            "::1",
            "fe80::1",
            "fd60:627a:a42b::5",
            "0.0.0.0",
        ] {
            assert!(!usable(bad.parse().unwrap()), "{bad}");
        }
        for good in ["10.201.0.2", "192.0.2.1", "2001:db8::1", "fd00::1"] {
            assert!(usable(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn local_endpoints_carry_the_port_and_no_loopback() {
        let eps = local_endpoints(4242, false).unwrap();
        assert!(
            eps.iter()
                .all(|e| e.port() == 4242 && !e.ip().is_loopback())
        );
        let with_lo = local_endpoints(4242, true).unwrap();
        assert!(with_lo.contains(&"127.0.0.1:4242".parse().unwrap()));
    }
}
