//! The path layer: where a peer's packets go and where a datagram came from, as one value
//! ([`Via`]) that WireGuard's peer set, disco's path machine and the runner all speak — a
//! direct UDP address, or DERP to the peer's node key — and the one inbound demux
//! ([`classify`]) that every arriving datagram passes, whichever path brought it.
//!
//! Which region a relayed packet crosses is not part of the value: it is the relay table's
//! business ([`super::relay::Relay`]), since a peer's home region can change while its
//! path (relayed) does not, and what a peer sends us arrives through *our* home region, not
//! its own (tailnet.md §11).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::derp::NodePublicKey;
use super::{disco, stun};

/// Upstream's `tailcfg.DerpMagicIPAddr`: the address that stands for DERP where an IP is
/// wanted (a pong's source for a ping that came through DERP, with the region as port;
/// WireGuard's cookie binding for a relayed sender).
pub const DERP_MAGIC_IP: Ipv4Addr = Ipv4Addr::new(127, 3, 3, 40);

/// Where a datagram goes to or came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// Directly over the UDP socket, to or from this address.
    Udp(SocketAddr),
    /// Through DERP, to or from the node with this key.
    Derp(NodePublicKey),
}

impl Via {
    /// The UDP address of a direct path.
    pub fn udp(&self) -> Option<SocketAddr> {
        match self {
            Self::Udp(addr) => Some(*addr),
            Self::Derp(_) => None,
        }
    }

    /// The IP WireGuard's cookie mechanism binds a sender to: the UDP source, or
    /// [`DERP_MAGIC_IP`] for a relayed one (it has no address of its own).
    pub fn source_ip(&self) -> IpAddr {
        match self {
            Self::Udp(addr) => addr.ip(),
            Self::Derp(_) => IpAddr::V4(DERP_MAGIC_IP),
        }
    }

    pub fn is_derp(&self) -> bool {
        matches!(self, Self::Derp(_))
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Udp(addr) => write!(f, "udp {addr}"),
            Self::Derp(key) => write!(f, "derp {}", key.short()),
        }
    }
}

/// What an arriving datagram is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A STUN answer to our prober (only over UDP; DERP never carries STUN).
    Stun,
    /// Disco (`TS💬` magic and a 62-byte header).
    Disco,
    /// Everything else goes to WireGuard, which rejects what is not its own.
    WireGuard,
}

/// Classifies a datagram the way upstream's magicsock does: STUN first, then disco, then
/// WireGuard.
pub fn classify(from: &Via, datagram: &[u8]) -> Kind {
    if matches!(from, Via::Udp(_)) && stun::is_stun(datagram) {
        Kind::Stun
    } else if disco::looks_like_disco(datagram) {
        Kind::Disco
    } else {
        Kind::WireGuard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_only_over_udp_disco_over_both() {
        let udp = Via::Udp("192.0.2.1:3478".parse().unwrap());
        let derp = Via::Derp(NodePublicKey::from_bytes([7; 32]));
        let mut stun_resp = vec![0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        stun_resp.extend_from_slice(&[0; 12]);
        assert_eq!(classify(&udp, &stun_resp), Kind::Stun);
        assert_eq!(classify(&derp, &stun_resp), Kind::WireGuard);
        let mut disco_pkt = "TS💬".as_bytes().to_vec();
        disco_pkt.resize(62 + 16, 0);
        assert_eq!(classify(&udp, &disco_pkt), Kind::Disco);
        assert_eq!(classify(&derp, &disco_pkt), Kind::Disco);
        assert_eq!(classify(&udp, &[4, 0, 0, 0]), Kind::WireGuard);
    }

    #[test]
    fn shows_the_address_or_the_key() {
        let udp = Via::Udp("192.0.2.1:41641".parse().unwrap());
        assert_eq!(udp.to_string(), "udp 192.0.2.1:41641");
        assert_eq!(udp.udp(), Some("192.0.2.1:41641".parse().unwrap()));
        let derp = Via::Derp(NodePublicKey::from_bytes([7; 32]));
        assert!(derp.to_string().starts_with("derp "), "{derp}");
        assert!(derp.is_derp() && derp.udp().is_none());
    }
}
