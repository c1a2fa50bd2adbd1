//! Addresses the zone hands out (tailnet.md §9).

use std::net::Ipv6Addr;

/// First 6 bytes of `CoderServicePrefix`, `fd60:627a:a42b::/48`.
pub const CODER_SERVICE_PREFIX: [u8; 6] = [0xfd, 0x60, 0x62, 0x7a, 0xa4, 0x2b];

/// `CoderServiceIPv6`: the in-tunnel DNS server, and the target of the Coder Connect marker.
pub const CODER_DNS_ADDR: Ipv6Addr = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 0, 0, 0, 0, 0x53);

/// `AddrFromUUID(CoderServicePrefix, id)`: the agent's 16 UUID bytes with bytes 0–5 replaced
/// by the Coder prefix. DNS answers and `Agent.ip_addrs` use this address.
pub fn coder_addr(agent_id: [u8; 16]) -> Ipv6Addr {
    let mut bytes = agent_id;
    bytes[..6].copy_from_slice(&CODER_SERVICE_PREFIX);
    Ipv6Addr::from(bytes)
}

/// First 6 bytes of `TailscaleServicePrefix`, `fd7a:115c:a1e0::/48`.
pub const TAILSCALE_SERVICE_PREFIX: [u8; 6] = [0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0];

/// `AddrFromUUID(TailscaleServicePrefix, id)`: the agent's other address; status pings go
/// there.
pub fn tailscale_addr(agent_id: [u8; 16]) -> Ipv6Addr {
    let mut bytes = agent_id;
    bytes[..6].copy_from_slice(&TAILSCALE_SERVICE_PREFIX);
    Ipv6Addr::from(bytes)
}

/// Parses a hyphenated (or bare hex) UUID into its 16 bytes. For configs and tests; the
/// control plane hands agent ids over as bytes.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut nibbles = text.bytes().filter(|b| *b != b'-');
    for byte in &mut out {
        let hi = hex_value(nibbles.next()?)?;
        let lo = hex_value(nibbles.next()?)?;
        *byte = hi << 4 | lo;
    }
    match nibbles.next() {
        Some(_) => None,
        None => Some(out),
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_address_is_uuid_with_coder_prefix() {
        // tailnet.md §9 example.
        let id = parse_uuid("00000000-0000-0101-0000-000000000000").unwrap();
        assert_eq!(
            coder_addr(id),
            "fd60:627a:a42b:101::".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn agent_address_keeps_bytes_6_to_15() {
        let id = parse_uuid("ffffffff-ffff-1234-5678-9abcdef01234").unwrap();
        assert_eq!(
            coder_addr(id),
            "fd60:627a:a42b:1234:5678:9abc:def0:1234"
                .parse::<Ipv6Addr>()
                .unwrap()
        );
    }

    #[test]
    fn tailscale_address_uses_the_tailscale_prefix() {
        let mut id = [0u8; 16];
        id[6] = 0x01;
        id[7] = 0x01;
        assert_eq!(tailscale_addr(id).to_string(), "fd7a:115c:a1e0:101::");
    }

    #[test]
    fn dns_address_is_coder_service_ipv6() {
        assert_eq!(CODER_DNS_ADDR.to_string(), "fd60:627a:a42b::53");
    }

    #[test]
    fn uuid_parse_rejects_wrong_length_and_non_hex() {
        assert_eq!(parse_uuid("00"), None);
        assert_eq!(parse_uuid("00000000-0000-0101-0000-0000000000000"), None);
        assert_eq!(parse_uuid("g0000000-0000-0101-0000-000000000000"), None);
    }
}
