//! STUN binding requests and responses (RFC 5389), as the Tailscale client sends and reads
//! them (coder/tailscale `net/stun/stun.go`). Sans-IO: bytes in, bytes out.
//!
//! A request is 40 bytes: the 20-byte header (type `0x0001`, length 20, magic cookie, 12-byte
//! transaction id), SOFTWARE `tailnode` and FINGERPRINT (CRC-32 of the preceding bytes XOR
//! `0x5354554e`). A response's mapped address comes from XOR-MAPPED-ADDRESS (`0x0020`, or the
//! `0x8020` some servers send), else from MAPPED-ADDRESS (`0x0001`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The fixed STUN header length.
pub const HEADER_LEN: usize = 20;
/// RFC 5389 magic cookie.
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// The SOFTWARE value the Tailscale client sends (8 bytes, so no padding).
pub const SOFTWARE: &[u8; 8] = b"tailnode";
/// Length of a binding request as built by [`binding_request`].
pub const REQUEST_LEN: usize = HEADER_LEN + 4 + SOFTWARE.len() + FINGERPRINT_ATTR_LEN;

const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Not in the RFC: XOR-MAPPED-ADDRESS shifted into the comprehension-optional range, which
/// some servers send.
const ATTR_XOR_MAPPED_ADDRESS_ALT: u16 = 0x8020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
/// Type, length and the CRC-32.
const FINGERPRINT_ATTR_LEN: usize = 8;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// A STUN transaction id.
pub type TxId = [u8; 12];

/// Why bytes were not the STUN message expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("not a STUN packet ({len} bytes)")]
    NotStun { len: usize },
    #[error("STUN message type {msg_type:#06x} is not a binding success response")]
    NotSuccessResponse { msg_type: u16 },
    #[error("STUN message type {msg_type:#06x} is not a binding request")]
    NotBindingRequest { msg_type: u16 },
    #[error("STUN attributes are malformed at offset {offset}")]
    MalformedAttributes { offset: usize },
    #[error("STUN message length {declared} exceeds the {available} bytes after the header")]
    LengthExceedsPacket { declared: usize, available: usize },
    #[error("STUN address attribute has unknown family {family:#04x} or is short")]
    BadAddress { family: u8 },
    #[error("STUN response carries no usable mapped address")]
    NoMappedAddress,
    #[error("STUN request did not come from Tailscale software")]
    WrongSoftware,
    #[error("STUN request does not end in a fingerprint")]
    NoFingerprint,
    #[error("STUN request fingerprint {got:#010x} != {want:#010x}")]
    WrongFingerprint { got: u32, want: u32 },
}

/// Whether `packet` is STUN (`stun.Is`): at least 20 bytes, the two top bits zero and the
/// magic cookie at offset 4. Used to tell STUN replies from disco and WireGuard on one socket.
pub fn is_stun(packet: &[u8]) -> bool {
    packet.len() >= HEADER_LEN && packet[0] & 0b1100_0000 == 0 && packet[4..8] == MAGIC_COOKIE
}

/// A binding request with SOFTWARE and FINGERPRINT, byte for byte as `stun.Request` builds it.
pub fn binding_request(tx_id: TxId) -> Vec<u8> {
    let mut b = Vec::with_capacity(REQUEST_LEN);
    b.extend_from_slice(&BINDING_REQUEST);
    b.extend_from_slice(&((REQUEST_LEN - HEADER_LEN) as u16).to_be_bytes());
    b.extend_from_slice(&MAGIC_COOKIE);
    b.extend_from_slice(&tx_id);
    b.extend_from_slice(&ATTR_SOFTWARE.to_be_bytes());
    b.extend_from_slice(&(SOFTWARE.len() as u16).to_be_bytes());
    b.extend_from_slice(SOFTWARE);
    let fp = fingerprint(&b);
    b.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    b.extend_from_slice(&4u16.to_be_bytes());
    b.extend_from_slice(&fp.to_be_bytes());
    b
}

/// Parses a binding success response: its transaction id and the mapped address
/// (`stun.ParseResponse`). IPv4-mapped IPv6 addresses are unmapped.
pub fn parse_response(packet: &[u8]) -> Result<(TxId, SocketAddr), StunError> {
    let (tx_id, attrs) = split_header(packet)?;
    let msg_type = u16::from_be_bytes([packet[0], packet[1]]);
    if packet[..2] != BINDING_SUCCESS {
        return Err(StunError::NotSuccessResponse { msg_type });
    }
    let mut xor_mapped = None;
    let mut mapped = None;
    for attr in Attributes::new(attrs) {
        let (ty, value) = attr?;
        match ty {
            ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_ALT => {
                xor_mapped = Some(xor_address(&tx_id, value)?);
            }
            ATTR_MAPPED_ADDRESS => mapped = Some(address(value)?),
            _ => {}
        }
    }
    let addr = xor_mapped.or(mapped).ok_or(StunError::NoMappedAddress)?;
    Ok((tx_id, addr))
}

/// Parses a binding request from a Tailscale client: SOFTWARE `tailnode`, ending in a valid
/// FINGERPRINT (`stun.ParseBindingRequest`). For test STUN servers.
pub fn parse_binding_request(packet: &[u8]) -> Result<TxId, StunError> {
    let (tx_id, attrs) = split_header(packet)?;
    if packet[..2] != BINDING_REQUEST {
        let msg_type = u16::from_be_bytes([packet[0], packet[1]]);
        return Err(StunError::NotBindingRequest { msg_type });
    }
    let (mut software_ok, mut last, mut got_fp) = (false, None, None);
    for attr in Attributes::new(attrs) {
        let (ty, value) = attr?;
        last = Some(ty);
        if ty == ATTR_SOFTWARE && value == SOFTWARE {
            software_ok = true;
        }
        if ty == ATTR_FINGERPRINT {
            got_fp = value.try_into().ok().map(u32::from_be_bytes);
        }
    }
    if !software_ok {
        return Err(StunError::WrongSoftware);
    }
    if last != Some(ATTR_FINGERPRINT) {
        return Err(StunError::NoFingerprint);
    }
    let end = HEADER_LEN + attrs.len();
    let want = fingerprint(&packet[..end - FINGERPRINT_ATTR_LEN]);
    match got_fp {
        Some(got) if got == want => Ok(tx_id),
        got => Err(StunError::WrongFingerprint {
            got: got.unwrap_or(0),
            want,
        }),
    }
}

/// A binding success response with one XOR-MAPPED-ADDRESS (`stun.Response`). For test STUN
/// servers.
pub fn binding_response(tx_id: TxId, addr: SocketAddr) -> Vec<u8> {
    let (family, ip): (u8, Vec<u8>) = match addr.ip() {
        IpAddr::V4(v4) => (1, v4.octets().to_vec()),
        IpAddr::V6(v6) => (2, v6.octets().to_vec()),
    };
    let attr_len = 4 + ip.len();
    let mut b = Vec::with_capacity(HEADER_LEN + 4 + attr_len);
    b.extend_from_slice(&BINDING_SUCCESS);
    b.extend_from_slice(&((4 + attr_len) as u16).to_be_bytes());
    b.extend_from_slice(&MAGIC_COOKIE);
    b.extend_from_slice(&tx_id);
    b.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    b.extend_from_slice(&(attr_len as u16).to_be_bytes());
    b.push(0);
    b.push(family);
    b.extend_from_slice(&(addr.port() ^ 0x2112).to_be_bytes());
    let key = xor_key(&tx_id);
    b.extend(ip.iter().zip(key).map(|(o, k)| o ^ k));
    b
}

/// CRC-32 (IEEE) of `b` XOR `0x5354554e` (RFC 5389 §15.5).
pub fn fingerprint(b: &[u8]) -> u32 {
    crc32_ieee(b) ^ FINGERPRINT_XOR
}

/// Checks STUN-ness and the declared length; returns the transaction id and the attributes
/// (trailing bytes past the declared length are dropped, as upstream does).
fn split_header(packet: &[u8]) -> Result<(TxId, &[u8]), StunError> {
    if !is_stun(packet) {
        return Err(StunError::NotStun { len: packet.len() });
    }
    let mut tx_id = TxId::default();
    tx_id.copy_from_slice(&packet[8..HEADER_LEN]);
    let declared = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let rest = &packet[HEADER_LEN..];
    let Some(attrs) = rest.get(..declared) else {
        return Err(StunError::LengthExceedsPacket {
            declared,
            available: rest.len(),
        });
    };
    Ok((tx_id, attrs))
}

/// Iterates `(type, value)` over attributes, each padded to a multiple of 4 (`foreachAttr`).
struct Attributes<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Attributes<'a> {
    fn new(attrs: &'a [u8]) -> Self {
        Self {
            rest: attrs,
            offset: HEADER_LEN,
        }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<(u16, &'a [u8]), StunError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let malformed = StunError::MalformedAttributes {
            offset: self.offset,
        };
        let Some((head, body)) = self.rest.split_first_chunk::<4>() else {
            self.rest = &[];
            return Some(Err(malformed));
        };
        let ty = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let padded = (len + 3) & !3;
        if padded > body.len() {
            self.rest = &[];
            return Some(Err(malformed));
        }
        let value = &body[..len];
        self.rest = &body[padded..];
        self.offset += 4 + padded;
        Some(Ok((ty, value)))
    }
}

/// XOR-MAPPED-ADDRESS: port XOR the cookie's top half, address XOR cookie ‖ transaction id.
fn xor_address(tx_id: &TxId, value: &[u8]) -> Result<SocketAddr, StunError> {
    let (port, raw) = address_fields(value)?;
    let mut ip = xor_key(tx_id);
    for (k, o) in ip.iter_mut().zip(raw) {
        *k ^= o;
    }
    Ok(SocketAddr::new(ip_from(&ip[..raw.len()]), port ^ 0x2112))
}

fn address(value: &[u8]) -> Result<SocketAddr, StunError> {
    let (port, raw) = address_fields(value)?;
    Ok(SocketAddr::new(ip_from(raw), port))
}

/// `0`, family, port, address (4 or 16 bytes; extra bytes ignored as upstream does).
fn address_fields(value: &[u8]) -> Result<(u16, &[u8]), StunError> {
    let [_, family, p0, p1, raw @ ..] = value else {
        return Err(StunError::BadAddress { family: 0 });
    };
    let len = match family {
        1 => 4,
        2 => 16,
        _ => 0,
    };
    match raw.get(..len) {
        Some(raw) if len > 0 => Ok((u16::from_be_bytes([*p0, *p1]), raw)),
        _ => Err(StunError::BadAddress { family: *family }),
    }
}

/// A 4-byte (IPv4) or 16-byte (IPv6, IPv4-mapped unmapped) address.
fn ip_from(raw: &[u8]) -> IpAddr {
    if let Ok(v4) = <[u8; 4]>::try_from(raw) {
        return IpAddr::V4(Ipv4Addr::from(v4));
    }
    let mut b = [0u8; 16];
    for (d, s) in b.iter_mut().zip(raw) {
        *d = *s;
    }
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn xor_key(tx_id: &TxId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE);
    key[4..].copy_from_slice(tx_id);
    key
}

/// Bitwise CRC-32 (IEEE 802.3, reflected, polynomial `0xedb88320`); STUN messages are tiny.
fn crc32_ieee(b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in b {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
#[path = "stun_tests.rs"]
mod tests;
