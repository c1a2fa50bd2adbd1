//! The disco packet codec (tailnet.md §13.4; coder/tailscale `disco/disco.go`). Sans-IO: bytes
//! in, bytes out; the caller sends them over UDP or through DERP.
//!
//! ```text
//! magic "TS💬" (6) | sender disco public key (32) | nonce (24) | NaCl box (16-byte tag ‖ plaintext)
//! plaintext: type (1) | version (1) | body
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crypto_box::aead::Aead;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use rand_core::{OsRng, RngCore};

use crate::net::derp::keys::{NodePrivateKey, NodePublicKey};

/// The 6-byte magic in front of every disco packet: `TS` then U+1F4AC in UTF-8 (`disco.Magic`).
pub const MAGIC: [u8; 6] = *b"TS\xf0\x9f\x92\xac";
/// Length of a raw disco or node public key.
pub const KEY_LEN: usize = 32;
/// Length of the NaCl box nonce (`disco.NonceLen`).
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag in front of the ciphertext (`box.Overhead`).
pub const TAG_LEN: usize = 16;
/// Magic + sender key + nonce: the shortest packet [`looks_like_disco`] accepts.
pub const HEADER_LEN: usize = MAGIC.len() + KEY_LEN + NONCE_LEN;
/// Length of a ping or pong transaction id.
pub const TX_ID_LEN: usize = 12;
/// One endpoint on the wire: a 16-byte IP (IPv4 as IPv4-mapped IPv6) and a big-endian port.
pub const ENDPOINT_LEN: usize = 16 + 2;
/// Whole-packet size of a padded ping or pong: a 1280-byte inner packet plus WireGuard's 30.
pub const PADDED_PACKET_LEN: usize = 1310;
/// Body length of a padded ping or pong (`paddedPayloadLen` in Coder's fork: 1230).
pub const PADDED_BODY_LEN: usize = PADDED_PACKET_LEN - HEADER_LEN - TAG_LEN - 2;
/// Minimum pong body: tx id, 16-byte IP, port (`pongLen`).
pub const PONG_BODY_LEN: usize = TX_ID_LEN + ENDPOINT_LEN;

/// Message type bytes (`disco.TypePing` …).
const TYPE_PING: u8 = 0x01;
const TYPE_PONG: u8 = 0x02;
const TYPE_CALL_ME_MAYBE: u8 = 0x03;
/// Versions sent: ping and pong are v1 (padded) in Coder's fork; call-me-maybe stays v0.
const VERSION_PADDED: u8 = 1;
const VERSION_CALL_ME_MAYBE: u8 = 0;

/// A ping / pong transaction id.
pub type TxId = [u8; TX_ID_LEN];

/// A disco X25519 public key (`discokey:` + hex in a node).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiscoPublicKey([u8; KEY_LEN]);

impl DiscoPublicKey {
    /// Wraps 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for DiscoPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "discokey:{}", hex::encode(self.0))
    }
}

impl fmt::Display for DiscoPublicKey {
    /// The first 8 hex digits, as logs name a peer's disco key (`d:0a1b2c3d`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d:{}", hex::encode(&self.0[..4]))
    }
}

/// A disco X25519 private key: the same kind of key as a node key, kept apart by type.
/// Never printed.
#[derive(Clone)]
pub struct DiscoPrivateKey(NodePrivateKey);

impl DiscoPrivateKey {
    /// A fresh random key from the operating system's RNG.
    pub fn generate() -> Self {
        Self(NodePrivateKey::generate())
    }

    /// Wraps 32 raw private key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(NodePrivateKey::from_bytes(bytes))
    }

    /// The raw private bytes. Handle with care.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public_key(&self) -> DiscoPublicKey {
        DiscoPublicKey(*self.0.public_key().as_bytes())
    }

    /// The NaCl box between this key and `peer`.
    fn salsa_box(&self, peer: &DiscoPublicKey) -> SalsaBox {
        SalsaBox::new(
            &PublicKey::from_bytes(peer.0),
            &SecretKey::from_bytes(self.0.to_bytes()),
        )
    }
}

impl fmt::Debug for DiscoPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiscoPrivateKey(public {:?})", self.public_key())
    }
}

/// A disco message (the plaintext inside the box).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// "Are you there on this path?"
    Ping(Ping),
    /// The answer to a ping, carrying the ping's source address as the responder saw it.
    Pong(Pong),
    /// "I have pinged you; ping me back on these endpoints" (sent through DERP).
    CallMeMaybe(CallMeMaybe),
}

/// `disco.Ping`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    /// Random per-ping id, echoed in the pong.
    pub tx_id: TxId,
    /// The sender's WireGuard node key; `None` when absent or all zero (old clients).
    pub node_key: Option<NodePublicKey>,
}

/// `disco.Pong`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pong {
    /// The id of the ping this answers.
    pub tx_id: TxId,
    /// The ping's source address as the responder saw it (IPv4-mapped addresses unmapped).
    pub src: SocketAddr,
}

/// `disco.CallMeMaybe`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallMeMaybe {
    /// The sender's endpoints (`MyNumber`); empty tells the receiver to forget them.
    pub endpoints: Vec<SocketAddr>,
}

/// Why a packet did not yield a disco message. The caller counts these and drops the packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoError {
    /// Shorter than the 62-byte header or without the `TS💬` magic.
    #[error("not a disco packet ({len} bytes, no magic or shorter than {HEADER_LEN})")]
    NotDisco { len: usize },
    /// Header present but no room for the 16-byte tag.
    #[error("disco packet from {sender} truncated: {len} bytes, no room for the box tag")]
    Truncated { sender: DiscoPublicKey, len: usize },
    /// The box did not open: forged, corrupted, or sealed for another key.
    #[error("disco packet from {sender} did not open (forged, corrupted or not for our key)")]
    BadBox { sender: DiscoPublicKey },
    /// The plaintext is shorter than the type and version bytes.
    #[error("disco message from {sender} is empty")]
    EmptyMessage { sender: DiscoPublicKey },
    /// An unknown message type byte.
    #[error("disco message from {sender} has unknown type {ty:#04x}")]
    UnknownType { sender: DiscoPublicKey, ty: u8 },
    /// A ping or pong body too short for its fixed fields.
    #[error("disco {kind} from {sender} is short: body {len} bytes, need {need}")]
    ShortBody {
        sender: DiscoPublicKey,
        kind: &'static str,
        len: usize,
        need: usize,
    },
}

/// Whether `packet` looks like a disco packet: at least the 62-byte header and the magic
/// (`disco.LooksLikeDiscoWrapper`). Cheap; for demultiplexing UDP and DERP input.
pub fn looks_like_disco(packet: &[u8]) -> bool {
    packet.len() >= HEADER_LEN && packet[..MAGIC.len()] == MAGIC
}

/// The sender's disco key of a packet that [`looks_like_disco`] (`disco.Source`).
pub fn sender(packet: &[u8]) -> Option<DiscoPublicKey> {
    if !looks_like_disco(packet) {
        return None;
    }
    let key: [u8; KEY_LEN] = packet[MAGIC.len()..MAGIC.len() + KEY_LEN].try_into().ok()?;
    Some(DiscoPublicKey(key))
}

/// Seals `msg` from `my_private` to `peer` with a random nonce.
pub fn seal(my_private: &DiscoPrivateKey, peer: &DiscoPublicKey, msg: &Message) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    seal_with_nonce(my_private, peer, msg, nonce)
}

/// Seals `msg` with a given nonce (tests and interop vectors; use [`seal`] otherwise).
pub fn seal_with_nonce(
    my_private: &DiscoPrivateKey,
    peer: &DiscoPublicKey,
    msg: &Message,
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let plaintext = encode_message(msg);
    let cipher = my_private.salsa_box(peer);
    // XSalsa20-Poly1305 over an in-memory buffer cannot fail; an empty box would be a bug.
    let sealed = cipher
        .encrypt(&nonce.into(), plaintext.as_slice())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(my_private.public_key().as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a disco packet addressed to `my_private`: the sender's key and the message.
pub fn open(
    my_private: &DiscoPrivateKey,
    packet: &[u8],
) -> Result<(DiscoPublicKey, Message), DiscoError> {
    let Some(sender) = sender(packet) else {
        return Err(DiscoError::NotDisco { len: packet.len() });
    };
    let sealed = &packet[HEADER_LEN..];
    if sealed.len() < TAG_LEN {
        return Err(DiscoError::Truncated {
            sender,
            len: packet.len(),
        });
    }
    let nonce: [u8; NONCE_LEN] = packet[MAGIC.len() + KEY_LEN..HEADER_LEN]
        .try_into()
        .map_err(|_| DiscoError::NotDisco { len: packet.len() })?;
    let cipher = my_private.salsa_box(&sender);
    let plaintext = cipher
        .decrypt(&nonce.into(), sealed)
        .map_err(|_| DiscoError::BadBox { sender })?;
    let msg = decode_message(sender, &plaintext)?;
    Ok((sender, msg))
}

/// The plaintext of `msg`: type, version, body (ping and pong padded to 1230 bytes).
pub fn encode_message(msg: &Message) -> Vec<u8> {
    match msg {
        Message::Ping(ping) => {
            let mut out = padded(TYPE_PING);
            out[2..2 + TX_ID_LEN].copy_from_slice(&ping.tx_id);
            if let Some(key) = ping.node_key {
                out[2 + TX_ID_LEN..2 + TX_ID_LEN + KEY_LEN].copy_from_slice(key.as_bytes());
            }
            out
        }
        Message::Pong(pong) => {
            let mut out = padded(TYPE_PONG);
            out[2..2 + TX_ID_LEN].copy_from_slice(&pong.tx_id);
            out[2 + TX_ID_LEN..2 + PONG_BODY_LEN].copy_from_slice(&endpoint_bytes(pong.src));
            out
        }
        Message::CallMeMaybe(cmm) => {
            let mut out = Vec::with_capacity(2 + ENDPOINT_LEN * cmm.endpoints.len());
            out.push(TYPE_CALL_ME_MAYBE);
            out.push(VERSION_CALL_ME_MAYBE);
            for ep in &cmm.endpoints {
                out.extend_from_slice(&endpoint_bytes(*ep));
            }
            out
        }
    }
}

/// Parses a plaintext (`disco.Parse`): lax about trailing bytes and the version of ping and
/// pong; a call-me-maybe that is not v0 or not a non-zero multiple of 18 bytes carries no
/// endpoints.
pub fn decode_message(sender: DiscoPublicKey, plaintext: &[u8]) -> Result<Message, DiscoError> {
    let [ty, version, body @ ..] = plaintext else {
        return Err(DiscoError::EmptyMessage { sender });
    };
    match *ty {
        TYPE_PING => {
            let Some((tx_id, rest)) = body.split_first_chunk::<TX_ID_LEN>() else {
                return Err(short(sender, "ping", body.len(), TX_ID_LEN));
            };
            let node_key = NodePublicKey::from_slice(rest).filter(|k| k.as_bytes() != &[0; 32]);
            Ok(Message::Ping(Ping {
                tx_id: *tx_id,
                node_key,
            }))
        }
        TYPE_PONG => {
            let Some((tx_id, rest)) = body.split_first_chunk::<TX_ID_LEN>() else {
                return Err(short(sender, "pong", body.len(), PONG_BODY_LEN));
            };
            let Some(src) = rest.first_chunk::<ENDPOINT_LEN>() else {
                return Err(short(sender, "pong", body.len(), PONG_BODY_LEN));
            };
            Ok(Message::Pong(Pong {
                tx_id: *tx_id,
                src: endpoint_from_bytes(src),
            }))
        }
        TYPE_CALL_ME_MAYBE => {
            let mut cmm = CallMeMaybe::default();
            if *version == VERSION_CALL_ME_MAYBE
                && !body.is_empty()
                && body.len() % ENDPOINT_LEN == 0
            {
                cmm.endpoints = body
                    .chunks_exact(ENDPOINT_LEN)
                    .filter_map(|c| c.first_chunk::<ENDPOINT_LEN>())
                    .map(endpoint_from_bytes)
                    .collect();
            }
            Ok(Message::CallMeMaybe(cmm))
        }
        ty => Err(DiscoError::UnknownType { sender, ty }),
    }
}

/// An 18-byte endpoint: IPv4 as IPv4-mapped IPv6, big-endian port.
pub fn endpoint_bytes(addr: SocketAddr) -> [u8; ENDPOINT_LEN] {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut out = [0u8; ENDPOINT_LEN];
    out[..16].copy_from_slice(&ip.octets());
    out[16..].copy_from_slice(&addr.port().to_be_bytes());
    out
}

/// Reads an 18-byte endpoint, unmapping IPv4-mapped addresses (`netip.Addr.Unmap`).
pub fn endpoint_from_bytes(b: &[u8; ENDPOINT_LEN]) -> SocketAddr {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[..16]);
    let ip = Ipv6Addr::from(ip);
    let ip = match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    };
    SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]]))
}

fn padded(ty: u8) -> Vec<u8> {
    let mut out = vec![0u8; 2 + PADDED_BODY_LEN];
    out[0] = ty;
    out[1] = VERSION_PADDED;
    out
}

fn short(sender: DiscoPublicKey, kind: &'static str, len: usize, need: usize) -> DiscoError {
    DiscoError::ShortBody {
        sender,
        kind,
        len,
        need,
    }
}
