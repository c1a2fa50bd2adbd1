//! The DERP frame codec (tailnet.md §13.3; Go: `derp/derp.go`). Sans-IO: bytes in, frames
//! out; frames in, bytes out.
//!
//! A frame is a 1-byte type, a 4-byte big-endian length of the rest, then the payload.
//! [`FrameDecoder`](super::decoder::FrameDecoder) cuts a byte stream into frames under a
//! [`Policy`](super::decoder::Policy) that holds the limits
//! of one side of the connection; [`Frame::parse`] gives a frame's payload its structure;
//! [`Frame::encode`] and the `encode_*` helpers write frames.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::keys::{KEY_LEN, NONCE_LEN, NodePublicKey};

/// `DERP🔑`: the 8 bytes that open a server-key frame.
pub const MAGIC: [u8; 8] = *b"DERP\xf0\x9f\x94\x91";
/// Frame header: type byte + big-endian u32 length.
pub const HEADER_LEN: usize = 5;
/// Largest packet carried by send/recv/forward packet frames, not counting keys.
pub const MAX_PACKET_SIZE: usize = 64 << 10;
/// A client treats a longer frame as a corrupt stream.
pub const CLIENT_MAX_FRAME_LEN: u32 = 1 << 20;
/// The server-key greeting may be at most this long (Go's `recvServerKey`).
pub const SERVER_KEY_MAX_LEN: u32 = 1 << 10;
/// Shortest client-info frame the server accepts: key + nonce.
pub const CLIENT_INFO_MIN_LEN: u32 = (KEY_LEN + NONCE_LEN) as u32;
/// Longest client-info frame the server accepts.
pub const CLIENT_INFO_MAX_LEN: u32 = 256 << 10;
/// Longest ping the server accepts (Go: "unreasonably extra large").
pub const SERVER_PING_MAX_LEN: u32 = 1000;
/// No frame longer than this is ever written.
pub const MAX_WRITE_LEN: usize = 10 << 20;

/// Frame type byte values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    ServerKey = 0x01,
    ClientInfo = 0x02,
    ServerInfo = 0x03,
    SendPacket = 0x04,
    RecvPacket = 0x05,
    KeepAlive = 0x06,
    NotePreferred = 0x07,
    PeerGone = 0x08,
    PeerPresent = 0x09,
    ForwardPacket = 0x0a,
    WatchConns = 0x10,
    ClosePeer = 0x11,
    Ping = 0x12,
    Pong = 0x13,
    Health = 0x14,
    Restarting = 0x15,
}

impl FrameType {
    /// The type for a byte, `None` for bytes no DERP version defines.
    pub fn from_u8(b: u8) -> Option<Self> {
        use FrameType::*;
        Some(match b {
            0x01 => ServerKey,
            0x02 => ClientInfo,
            0x03 => ServerInfo,
            0x04 => SendPacket,
            0x05 => RecvPacket,
            0x06 => KeepAlive,
            0x07 => NotePreferred,
            0x08 => PeerGone,
            0x09 => PeerPresent,
            0x0a => ForwardPacket,
            0x10 => WatchConns,
            0x11 => ClosePeer,
            0x12 => Ping,
            0x13 => Pong,
            0x14 => Health,
            0x15 => Restarting,
            _ => return None,
        })
    }

    /// Lower-case name for errors and logs.
    pub fn name(self) -> &'static str {
        use FrameType::*;
        match self {
            ServerKey => "server key",
            ClientInfo => "client info",
            ServerInfo => "server info",
            SendPacket => "send packet",
            RecvPacket => "recv packet",
            KeepAlive => "keep-alive",
            NotePreferred => "note preferred",
            PeerGone => "peer gone",
            PeerPresent => "peer present",
            ForwardPacket => "forward packet",
            WatchConns => "watch conns",
            ClosePeer => "close peer",
            Ping => "ping",
            Pong => "pong",
            Health => "health",
            Restarting => "restarting",
        }
    }
}

/// Why a server says a peer is gone (the optional byte after the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerGoneReason {
    /// `0x00`: the peer disconnected from this server (also: no reason byte).
    Disconnected,
    /// `0x01`: this server does not know the peer.
    NotHere,
    /// A reason byte no version defines, kept as sent.
    Other(u8),
}

impl PeerGoneReason {
    fn from_u8(b: u8) -> Self {
        match b {
            0x00 => Self::Disconnected,
            0x01 => Self::NotHere,
            b => Self::Other(b),
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Disconnected => 0x00,
            Self::NotHere => 0x01,
            Self::Other(b) => b,
        }
    }
}

/// One frame with its payload parsed. Borrows from the frame's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    ServerKey {
        key: NodePublicKey,
    },
    ClientInfo {
        key: NodePublicKey,
        sealed: &'a [u8],
    },
    ServerInfo {
        sealed: &'a [u8],
    },
    SendPacket {
        dst: NodePublicKey,
        packet: &'a [u8],
    },
    RecvPacket {
        src: NodePublicKey,
        packet: &'a [u8],
    },
    KeepAlive,
    NotePreferred {
        preferred: bool,
    },
    PeerGone {
        key: NodePublicKey,
        reason: PeerGoneReason,
    },
    PeerPresent {
        key: NodePublicKey,
    },
    ForwardPacket {
        src: NodePublicKey,
        dst: NodePublicKey,
        packet: &'a [u8],
    },
    WatchConns,
    ClosePeer {
        key: NodePublicKey,
    },
    Ping {
        data: [u8; 8],
    },
    Pong {
        data: [u8; 8],
    },
    /// Problem text; empty means healthy again.
    Health {
        problem: Cow<'a, str>,
    },
    Restarting {
        reconnect_in: Duration,
        try_for: Duration,
    },
    /// A type byte this version does not define.
    Unknown {
        typ: u8,
        payload: &'a [u8],
    },
}

/// A frame cut from the stream, payload not yet parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The type byte.
    pub typ: u8,
    /// The payload (after the 5-byte header).
    pub payload: Bytes,
}

impl RawFrame {
    /// [`Frame::parse`] of this frame.
    pub fn parse(&self) -> Result<Frame<'_>, FrameError> {
        Frame::parse(self.typ, &self.payload)
    }
}

/// What went wrong in a frame or a frame stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame type {typ:#04x} declares {len} bytes, over the {max}-byte limit ({side})")]
    TooLong {
        typ: u8,
        len: u32,
        max: u32,
        side: &'static str,
    },
    #[error("{kind} frame of {len} bytes is shorter than its {min}-byte minimum")]
    Short {
        kind: &'static str,
        len: usize,
        min: usize,
    },
    #[error("{kind} frame must be exactly {want} bytes, got {len}")]
    WrongSize {
        kind: &'static str,
        len: usize,
        want: usize,
    },
    #[error("server key frame does not start with the DERP magic (got {got:02x?})")]
    BadMagic { got: [u8; 8] },
    #[error("{kind} frame carries a {len}-byte packet, over the {MAX_PACKET_SIZE}-byte maximum")]
    PacketTooLarge { kind: &'static str, len: usize },
    #[error("expected a {expected} frame first, got type {got:#04x}")]
    Unexpected { expected: &'static str, got: u8 },
    #[error("refusing to write a {len}-byte frame (limit {MAX_WRITE_LEN})")]
    WriteTooLarge { len: usize },
}

impl<'a> Frame<'a> {
    /// Gives a payload of type `typ` its structure. Extra trailing bytes are ignored where Go
    /// ignores them (server key, peer gone, ping, pong, restarting); fixed-size frames of the
    /// wrong size are errors where Go's server refuses them.
    pub fn parse(typ: u8, p: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let Some(t) = FrameType::from_u8(typ) else {
            return Ok(Frame::Unknown { typ, payload: p });
        };
        let kind = t.name();
        let min = |n: usize| {
            if p.len() < n {
                Err(FrameError::Short {
                    kind,
                    len: p.len(),
                    min: n,
                })
            } else {
                Ok(())
            }
        };
        let exact = |n: usize| {
            if p.len() != n {
                Err(FrameError::WrongSize {
                    kind,
                    len: p.len(),
                    want: n,
                })
            } else {
                Ok(())
            }
        };
        let key_at = |at: usize| {
            let mut k = [0u8; KEY_LEN];
            k.copy_from_slice(&p[at..at + KEY_LEN]);
            NodePublicKey::from_bytes(k)
        };
        let eight = || {
            let mut d = [0u8; 8];
            d.copy_from_slice(&p[..8]);
            d
        };
        let packet = |at: usize| {
            let packet = &p[at..];
            if packet.len() > MAX_PACKET_SIZE {
                Err(FrameError::PacketTooLarge {
                    kind,
                    len: packet.len(),
                })
            } else {
                Ok(packet)
            }
        };
        Ok(match t {
            FrameType::ServerKey => {
                min(MAGIC.len() + KEY_LEN)?;
                let got: [u8; 8] = eight();
                if got != MAGIC {
                    return Err(FrameError::BadMagic { got });
                }
                Frame::ServerKey {
                    key: key_at(MAGIC.len()),
                }
            }
            FrameType::ClientInfo => {
                min(KEY_LEN + NONCE_LEN)?;
                Frame::ClientInfo {
                    key: key_at(0),
                    sealed: &p[KEY_LEN..],
                }
            }
            FrameType::ServerInfo => {
                min(NONCE_LEN)?;
                Frame::ServerInfo { sealed: p }
            }
            FrameType::SendPacket => {
                min(KEY_LEN)?;
                Frame::SendPacket {
                    dst: key_at(0),
                    packet: packet(KEY_LEN)?,
                }
            }
            FrameType::RecvPacket => {
                min(KEY_LEN)?;
                Frame::RecvPacket {
                    src: key_at(0),
                    packet: packet(KEY_LEN)?,
                }
            }
            FrameType::KeepAlive => Frame::KeepAlive,
            FrameType::NotePreferred => {
                exact(1)?;
                Frame::NotePreferred {
                    preferred: p[0] != 0,
                }
            }
            FrameType::PeerGone => {
                min(KEY_LEN)?;
                let reason = p.get(KEY_LEN).map_or(PeerGoneReason::Disconnected, |b| {
                    PeerGoneReason::from_u8(*b)
                });
                Frame::PeerGone {
                    key: key_at(0),
                    reason,
                }
            }
            FrameType::PeerPresent => {
                min(KEY_LEN)?;
                Frame::PeerPresent { key: key_at(0) }
            }
            FrameType::ForwardPacket => {
                min(2 * KEY_LEN)?;
                Frame::ForwardPacket {
                    src: key_at(0),
                    dst: key_at(KEY_LEN),
                    packet: packet(2 * KEY_LEN)?,
                }
            }
            FrameType::WatchConns => {
                exact(0)?;
                Frame::WatchConns
            }
            FrameType::ClosePeer => {
                exact(KEY_LEN)?;
                Frame::ClosePeer { key: key_at(0) }
            }
            FrameType::Ping => {
                min(8)?;
                Frame::Ping { data: eight() }
            }
            FrameType::Pong => {
                min(8)?;
                Frame::Pong { data: eight() }
            }
            FrameType::Health => Frame::Health {
                problem: String::from_utf8_lossy(p),
            },
            FrameType::Restarting => {
                min(8)?;
                let ms = |at: usize| {
                    let v = u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
                    Duration::from_millis(u64::from(v))
                };
                Frame::Restarting {
                    reconnect_in: ms(0),
                    try_for: ms(4),
                }
            }
        })
    }

    /// The type byte of this frame.
    pub fn typ(&self) -> u8 {
        match self {
            Frame::ServerKey { .. } => FrameType::ServerKey as u8,
            Frame::ClientInfo { .. } => FrameType::ClientInfo as u8,
            Frame::ServerInfo { .. } => FrameType::ServerInfo as u8,
            Frame::SendPacket { .. } => FrameType::SendPacket as u8,
            Frame::RecvPacket { .. } => FrameType::RecvPacket as u8,
            Frame::KeepAlive => FrameType::KeepAlive as u8,
            Frame::NotePreferred { .. } => FrameType::NotePreferred as u8,
            Frame::PeerGone { .. } => FrameType::PeerGone as u8,
            Frame::PeerPresent { .. } => FrameType::PeerPresent as u8,
            Frame::ForwardPacket { .. } => FrameType::ForwardPacket as u8,
            Frame::WatchConns => FrameType::WatchConns as u8,
            Frame::ClosePeer { .. } => FrameType::ClosePeer as u8,
            Frame::Ping { .. } => FrameType::Ping as u8,
            Frame::Pong { .. } => FrameType::Pong as u8,
            Frame::Health { .. } => FrameType::Health as u8,
            Frame::Restarting { .. } => FrameType::Restarting as u8,
            Frame::Unknown { typ, .. } => *typ,
        }
    }

    /// Appends this frame (header + payload) to `out`. Fails, writing nothing, when the
    /// frame would exceed 10 MiB or a packet exceeds 64 KiB.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), FrameError> {
        fn k(key: &NodePublicKey) -> &[u8] {
            key.as_bytes()
        }
        match self {
            Frame::ServerKey { key } => put(out, self.typ(), &[&MAGIC, k(key)]),
            Frame::ClientInfo { key, sealed } => put(out, self.typ(), &[k(key), sealed]),
            Frame::ServerInfo { sealed } => put(out, self.typ(), &[sealed]),
            Frame::SendPacket { dst, packet } => encode_send_packet(out, dst, packet),
            Frame::RecvPacket { src, packet } => encode_recv_packet(out, src, packet),
            Frame::KeepAlive | Frame::WatchConns => put(out, self.typ(), &[]),
            Frame::NotePreferred { preferred } => put(out, self.typ(), &[&[u8::from(*preferred)]]),
            Frame::PeerGone { key, reason } => put(out, self.typ(), &[k(key), &[reason.to_u8()]]),
            Frame::PeerPresent { key } | Frame::ClosePeer { key } => {
                put(out, self.typ(), &[k(key)])
            }
            Frame::ForwardPacket { src, dst, packet } => {
                check_packet("forward packet", packet)?;
                put(out, self.typ(), &[k(src), k(dst), packet])
            }
            Frame::Ping { data } | Frame::Pong { data } => put(out, self.typ(), &[data]),
            Frame::Health { problem } => put(out, self.typ(), &[problem.as_bytes()]),
            Frame::Restarting {
                reconnect_in,
                try_for,
            } => {
                let ms = |d: &Duration| {
                    u32::try_from(d.as_millis())
                        .unwrap_or(u32::MAX)
                        .to_be_bytes()
                };
                put(out, self.typ(), &[&ms(reconnect_in), &ms(try_for)])
            }
            Frame::Unknown { typ, payload } => put(out, *typ, &[payload]),
        }
    }
}

/// Appends a send-packet frame without building a [`Frame`] (the hot path).
pub fn encode_send_packet(
    out: &mut BytesMut,
    dst: &NodePublicKey,
    packet: &[u8],
) -> Result<(), FrameError> {
    check_packet("send packet", packet)?;
    put(out, FrameType::SendPacket as u8, &[dst.as_bytes(), packet])
}

/// Appends a recv-packet frame without building a [`Frame`] (the hot path).
pub fn encode_recv_packet(
    out: &mut BytesMut,
    src: &NodePublicKey,
    packet: &[u8],
) -> Result<(), FrameError> {
    check_packet("recv packet", packet)?;
    put(out, FrameType::RecvPacket as u8, &[src.as_bytes(), packet])
}

fn check_packet(kind: &'static str, packet: &[u8]) -> Result<(), FrameError> {
    if packet.len() > MAX_PACKET_SIZE {
        return Err(FrameError::PacketTooLarge {
            kind,
            len: packet.len(),
        });
    }
    Ok(())
}

fn put(out: &mut BytesMut, typ: u8, parts: &[&[u8]]) -> Result<(), FrameError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > MAX_WRITE_LEN {
        return Err(FrameError::WriteTooLarge { len });
    }
    out.reserve(HEADER_LEN + len);
    out.put_u8(typ);
    out.put_u32(len as u32); // ≤ 10 MiB, checked above
    for p in parts {
        out.put_slice(p);
    }
    Ok(())
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
