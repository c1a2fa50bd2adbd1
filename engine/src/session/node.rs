//! Tailnet `Node` encodings (tailnet.md §5, coder/coder `tailnet/convert.go`): node keys
//! are `np` + 32 raw bytes, disco keys `discokey:` + 64 hex digits, addresses CIDR text.

use std::collections::HashMap;
use std::time::SystemTime;

use codervpn_proto::tailnet::Node;
use ipnet::IpNet;

/// Prefix of a node key's binary form (`NodePublic.MarshalBinary`).
pub const NODE_KEY_PREFIX: &[u8; 2] = b"np";
/// Prefix of a disco key's text form.
pub const DISCO_KEY_PREFIX: &str = "discokey:";

/// Why a peer's node cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("node key is {len} bytes; want 34 (\"np\" + 32-byte key)")]
    KeyLength { len: usize },
    #[error("node key does not start with \"np\"")]
    KeyPrefix,
    #[error("node address {text:?} is not a CIDR prefix")]
    Cidr { text: String },
    #[error("disco key {text:?} is not \"discokey:\" + 64 hex digits")]
    DiscoKey { text: String },
}

/// `np` + the 32 key bytes.
pub fn encode_node_key(key: &[u8; 32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(34);
    v.extend_from_slice(NODE_KEY_PREFIX);
    v.extend_from_slice(key);
    v
}

/// The 32 key bytes of a node key; anything but `np` + 32 bytes is refused.
pub fn decode_node_key(b: &[u8]) -> Result<[u8; 32], NodeError> {
    if b.len() != 34 {
        return Err(NodeError::KeyLength { len: b.len() });
    }
    if &b[..2] != NODE_KEY_PREFIX {
        return Err(NodeError::KeyPrefix);
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&b[2..]);
    Ok(k)
}

/// `discokey:` + 64 lower-case hex digits.
pub fn encode_disco_key(key: &[u8; 32]) -> String {
    format!("{DISCO_KEY_PREFIX}{}", hex::encode(key))
}

/// The 32 key bytes of a `discokey:<hex>` text.
pub fn decode_disco_key(text: &str) -> Result<[u8; 32], NodeError> {
    let err = || NodeError::DiscoKey {
        text: text.to_owned(),
    };
    let hex_digits = text.strip_prefix(DISCO_KEY_PREFIX).ok_or_else(err)?;
    let mut k = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut k).map_err(|_| err())?;
    Ok(k)
}

/// Parses a node's `endpoints` (`ip:port`, IPv6 in brackets); unparsable ones are skipped.
pub fn parse_endpoints(texts: &[String]) -> Vec<std::net::SocketAddr> {
    texts.iter().filter_map(|t| t.parse().ok()).collect()
}

/// Parses CIDR texts (`addresses`, `allowed_ips`).
pub fn parse_prefixes(texts: &[String]) -> Result<Vec<IpNet>, NodeError> {
    texts
        .iter()
        .map(|t| {
            t.parse::<IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| NodeError::Cidr { text: t.clone() })
        })
        .collect()
}

/// A `Node.derp_latency` key: the region id in decimal and the address family the latency
/// was measured over (`999-v4`, `999-v6`).
pub fn derp_latency_key(region: i64, v6: bool) -> String {
    format!("{region}-{}", if v6 { "v6" } else { "v4" })
}

/// What a node says about itself, for building one.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: i64,
    pub key: [u8; 32],
    pub disco: [u8; 32],
    pub preferred_derp: i64,
    /// `<region id>-v4` / `-v6` → latency in seconds ([`derp_latency_key`]).
    pub derp_latency: Vec<(String, f64)>,
    pub addresses: Vec<IpNet>,
    pub endpoints: Vec<std::net::SocketAddr>,
}

impl NodeInfo {
    /// The protobuf node, stamped `as_of` now. Allowed IPs equal the addresses.
    pub fn to_proto(&self) -> Node {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let addrs: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        Node {
            id: self.id,
            as_of: Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            key: encode_node_key(&self.key),
            disco: encode_disco_key(&self.disco),
            preferred_derp: i32::try_from(self.preferred_derp).unwrap_or(0),
            derp_latency: self.derp_latency.iter().cloned().collect::<HashMap<_, _>>(),
            derp_forced_websocket: HashMap::new(),
            addresses: addrs.clone(),
            allowed_ips: addrs,
            endpoints: self.endpoints.iter().map(ToString::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keys_are_np_plus_32_bytes_and_nothing_else_decodes() {
        let k = [7u8; 32];
        let b = encode_node_key(&k);
        assert_eq!(b.len(), 34);
        assert_eq!(&b[..2], b"np");
        assert_eq!(decode_node_key(&b), Ok(k));
        assert_eq!(
            decode_node_key(&b[..33]),
            Err(NodeError::KeyLength { len: 33 })
        );
        let mut bad = b.clone();
        bad[0] = b'x';
        assert_eq!(decode_node_key(&bad), Err(NodeError::KeyPrefix));
    }

    #[test]
    fn disco_keys_are_prefixed_lower_hex() {
        let s = encode_disco_key(&[0xab; 32]);
        assert_eq!(s.len(), 9 + 64);
        assert!(s.starts_with("discokey:abab"));
    }

    #[test]
    fn disco_keys_decode_from_their_text_and_nothing_else_does() {
        let k = [0x5a; 32];
        assert_eq!(decode_disco_key(&encode_disco_key(&k)), Ok(k));
        assert!(decode_disco_key("discokey:zz").is_err());
        assert!(
            decode_disco_key(&hex::encode(k)).is_err(),
            "prefix required"
        );
    }

    #[test]
    fn endpoints_parse_both_families_and_skip_garbage() {
        let eps = parse_endpoints(&["10.0.0.1:41641".into(), "[fd00::2]:5".into(), "nope".into()]);
        assert_eq!(
            eps,
            [
                "10.0.0.1:41641".parse().unwrap(),
                "[fd00::2]:5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn proto_node_carries_addresses_as_allowed_ips_and_latency_keys() {
        let info = NodeInfo {
            id: 5,
            key: [1; 32],
            disco: [2; 32],
            preferred_derp: 999,
            derp_latency: vec![(derp_latency_key(999, false), 0.012)],
            addresses: vec!["fd60:627a:a42b::1/128".parse().unwrap()],
            endpoints: vec![],
        };
        let n = info.to_proto();
        assert_eq!(n.addresses, ["fd60:627a:a42b::1/128"]);
        assert_eq!(n.allowed_ips, n.addresses);
        assert_eq!(n.derp_latency.get("999-v4"), Some(&0.012));
        assert_eq!(n.preferred_derp, 999);
        assert_eq!(
            parse_prefixes(&n.allowed_ips).unwrap(),
            info.addresses.clone()
        );
        assert!(parse_prefixes(&["nope".into()]).is_err());
    }
}
