//! dRPC wire format (storj/drpc `drpcwire`; tailnet.md §13.2), sans-IO: varints, frames,
//! packets split into frames on send and reassembled on receive.
//!
//! A frame is a control byte (bit 0 done, bits 1–6 kind, bit 7 control), three unsigned
//! LEB128 varints (stream id, message id, data length) and the data. A packet is the frames
//! of one (stream id, message id) up to the one with the done bit.

use std::fmt;

/// Longest varint we accept: ten 7-bit groups hold 64 bits.
pub const MAX_VARINT_LEN: usize = 10;
/// Senders split packet data into frames of at most this many bytes (drpcwire `SplitData`).
pub const SPLIT_SIZE: usize = 64 * 1024;
/// A reader refuses a packet whose data exceeds this (drpcwire's default
/// `MaximumBufferSize`, and Coder's `drpcsdk.MaxMessageSize`).
pub const MAX_PACKET_SIZE: usize = 4 << 20;
/// Error code of an "unimplemented" error (the generated server stub's answer).
pub const CODE_UNIMPLEMENTED: u64 = 12;

/// Packet kind, bits 1–6 of the control byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Data is the method path.
    Invoke,
    /// Data is one protobuf message.
    Message,
    /// Data is an 8-byte big-endian code and UTF-8 text.
    Error,
    /// Sent with the control bit; no data.
    Cancel,
    /// No data.
    Close,
    /// No data: the sender sends nothing more.
    CloseSend,
    /// Metadata for the following invoke.
    InvokeMetadata,
    /// Any other 6-bit value; ignored when the control bit is set.
    Unknown(u8),
}

impl Kind {
    /// The kind carried by bits 1–6 of `control`.
    pub fn from_control(control: u8) -> Self {
        match (control >> 1) & 0x3f {
            1 => Self::Invoke,
            2 => Self::Message,
            3 => Self::Error,
            4 => Self::Cancel,
            5 => Self::Close,
            6 => Self::CloseSend,
            7 => Self::InvokeMetadata,
            other => Self::Unknown(other),
        }
    }

    /// The 6-bit value of this kind.
    pub fn value(self) -> u8 {
        match self {
            Self::Invoke => 1,
            Self::Message => 2,
            Self::Error => 3,
            Self::Cancel => 4,
            Self::Close => 5,
            Self::CloseSend => 6,
            Self::InvokeMetadata => 7,
            Self::Unknown(v) => v & 0x3f,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invoke => f.write_str("invoke"),
            Self::Message => f.write_str("message"),
            Self::Error => f.write_str("error"),
            Self::Cancel => f.write_str("cancel"),
            Self::Close => f.write_str("close"),
            Self::CloseSend => f.write_str("close-send"),
            Self::InvokeMetadata => f.write_str("invoke-metadata"),
            Self::Unknown(v) => write!(f, "unknown kind {v}"),
        }
    }
}

/// (stream id, message id); ordered stream first, like drpcwire's `ID.Less`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id {
    pub stream: u64,
    pub message: u64,
}

impl Id {
    pub const fn new(stream: u64, message: u64) -> Self {
        Self { stream, message }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(stream {}, message {})", self.stream, self.message)
    }
}

/// One frame, borrowing its data from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub id: Id,
    pub kind: Kind,
    /// Last frame of its packet.
    pub done: bool,
    /// Forward-compatible control frame.
    pub control: bool,
    pub data: &'a [u8],
}

/// A reassembled packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub id: Id,
    pub kind: Kind,
    /// Set when any of its frames had the control bit.
    pub control: bool,
    pub data: Vec<u8>,
}

/// Input that is not valid dRPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("{field} varint is longer than {MAX_VARINT_LEN} bytes")]
    VarintTooLong { field: &'static str },
    #[error("{field} varint overflows 64 bits")]
    VarintOverflow { field: &'static str },
    #[error("frame {id} announces {len} data bytes, over the {max}-byte packet limit")]
    FrameTooLarge { id: Id, len: u64, max: usize },
    #[error("frame {got} is below the next acceptable id {min}: ids must not go backwards")]
    IdNotMonotonic { got: Id, min: Id },
    #[error("frame {id} changes the packet kind from {was} to {now}")]
    KindChanged { id: Id, was: Kind, now: Kind },
    #[error("packet {id} grew to {len} bytes, over the {max}-byte limit")]
    PacketTooLarge { id: Id, len: usize, max: usize },
}

/// Appends `x` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8 & 0x7f) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// Reads a varint from the start of `buf`: `Ok(None)` when `buf` ends inside it, else the
/// value and the number of bytes it took. `field` names it in errors.
pub fn read_varint(buf: &[u8], field: &'static str) -> Result<Option<(u64, usize)>, CodecError> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate() {
        if i == MAX_VARINT_LEN {
            return Err(CodecError::VarintTooLong { field });
        }
        let group = u64::from(byte & 0x7f);
        if i == MAX_VARINT_LEN - 1 && group > 1 {
            // The tenth group holds only bit 63.
            return Err(CodecError::VarintOverflow { field });
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        return Err(CodecError::VarintTooLong { field });
    }
    Ok(None)
}

/// Parses one frame from the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// frame and its encoded length. A frame announcing more than `max_data` bytes is refused
/// as soon as its header is read, before its data arrives.
pub fn parse_frame(buf: &[u8], max_data: usize) -> Result<Option<(Frame<'_>, usize)>, CodecError> {
    let Some(&control) = buf.first() else {
        return Ok(None);
    };
    let mut at = 1;
    let Some((stream, n)) = read_varint(&buf[at..], "stream id")? else {
        return Ok(None);
    };
    at += n;
    let Some((message, n)) = read_varint(&buf[at..], "message id")? else {
        return Ok(None);
    };
    at += n;
    let Some((len, n)) = read_varint(&buf[at..], "data length")? else {
        return Ok(None);
    };
    at += n;
    let id = Id::new(stream, message);
    if len > max_data as u64 {
        return Err(CodecError::FrameTooLarge {
            id,
            len,
            max: max_data,
        });
    }
    let len = len as usize; // bounded by max_data above
    let Some(data) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let frame = Frame {
        id,
        kind: Kind::from_control(control),
        done: control & 0x01 != 0,
        control: control & 0x80 != 0,
        data,
    };
    Ok(Some((frame, at + len)))
}

/// The control byte of a frame.
pub fn control_byte(kind: Kind, done: bool, control: bool) -> u8 {
    (kind.value() << 1) | u8::from(done) | (u8::from(control) << 7)
}

/// Appends one frame.
pub fn put_frame(out: &mut Vec<u8>, frame: &Frame<'_>) {
    out.push(control_byte(frame.kind, frame.done, frame.control));
    put_varint(out, frame.id.stream);
    put_varint(out, frame.id.message);
    put_varint(out, frame.data.len() as u64);
    out.extend_from_slice(frame.data);
}

/// Appends a packet as frames of at most [`SPLIT_SIZE`] data bytes; empty data gives one
/// empty frame.
pub fn put_packet(out: &mut Vec<u8>, id: Id, kind: Kind, control: bool, data: &[u8]) {
    put_packet_split(out, id, kind, control, data, SPLIT_SIZE);
}

/// [`put_packet`] with another split size (at least 1).
pub fn put_packet_split(
    out: &mut Vec<u8>,
    id: Id,
    kind: Kind,
    control: bool,
    data: &[u8],
    split: usize,
) {
    let split = split.max(1);
    let mut rest = data;
    loop {
        let (chunk, tail) = rest.split_at(rest.len().min(split));
        rest = tail;
        put_frame(
            out,
            &Frame {
                id,
                kind,
                done: rest.is_empty(),
                control,
                data: chunk,
            },
        );
        if rest.is_empty() {
            return;
        }
    }
}

/// Data of an error packet: 8-byte big-endian `code`, then `text`.
pub fn error_data(code: u64, text: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(8 + text.len());
    data.extend_from_slice(&code.to_be_bytes());
    data.extend_from_slice(text.as_bytes());
    data
}

/// Splits error packet data into code and text. Like drpcwire's `UnmarshalError`, data
/// shorter than 8 bytes is taken as text with code 0 and a note.
pub fn parse_error_data(data: &[u8]) -> (u64, String) {
    match data.split_first_chunk::<8>() {
        Some((code, text)) => (
            u64::from_be_bytes(*code),
            String::from_utf8_lossy(text).into_owned(),
        ),
        None => (
            0,
            format!(
                "{} (drpcwire note: invalid error data)",
                String::from_utf8_lossy(data)
            ),
        ),
    }
}

/// Reassembles packets from a byte stream (drpcwire `Reader`): bytes in with [`push`],
/// packets out of [`next_packet`].
///
/// Ids must not go backwards: a frame whose (stream id, message id) is lower than the last
/// one accepted is an error, as is one that repeats the id of a finished packet; ids start at
/// (1, 1). A frame with a higher id than an unfinished packet drops that packet and starts a
/// new one (drpcwire's "asynchronous interrupt"). A frame that changes the kind of an
/// unfinished packet, and a packet over the size limit, are errors. After an error the
/// reader is poisoned: it keeps returning that error.
///
/// [`push`]: PacketReader::push
/// [`next_packet`]: PacketReader::next_packet
#[derive(Debug)]
pub struct PacketReader {
    buf: Vec<u8>,
    /// Parsed up to here.
    pos: usize,
    /// Lowest acceptable (stream id, message id); the message id as u128 so that the id
    /// after (s, u64::MAX) exists.
    floor: (u64, u128),
    partial: Option<Packet>,
    max_packet: usize,
    failed: Option<CodecError>,
}

impl Default for PacketReader {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketReader {
    /// A reader with the [`MAX_PACKET_SIZE`] limit.
    pub fn new() -> Self {
        Self::with_max_packet_size(MAX_PACKET_SIZE)
    }

    pub fn with_max_packet_size(max_packet: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            floor: (1, 1),
            partial: None,
            max_packet,
            failed: None,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a returned packet's frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether a packet has begun (some of its frames arrived) but is not finished.
    pub fn in_packet(&self) -> bool {
        self.partial.is_some() || self.buffered() > 0
    }

    /// The next complete packet, `Ok(None)` if more bytes are needed.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, CodecError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.advance() {
            Ok(p) => Ok(p),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn advance(&mut self) -> Result<Option<Packet>, CodecError> {
        loop {
            let Some((frame, used)) = parse_frame(&self.buf[self.pos..], self.max_packet)? else {
                return Ok(None);
            };
            let id = frame.id;
            if (id.stream, u128::from(id.message)) < self.floor {
                let min = Id::new(
                    self.floor.0,
                    u64::try_from(self.floor.1).unwrap_or(u64::MAX),
                );
                return Err(CodecError::IdNotMonotonic { got: id, min });
            }
            let partial = match self.partial.take() {
                Some(p) if p.id == id => {
                    if p.kind != frame.kind {
                        return Err(CodecError::KindChanged {
                            id,
                            was: p.kind,
                            now: frame.kind,
                        });
                    }
                    p
                }
                Some(_) | None => Packet {
                    id,
                    kind: frame.kind,
                    control: false,
                    data: Vec::new(),
                },
            };
            let mut packet = partial;
            packet.control |= frame.control;
            let len = packet.data.len() + frame.data.len();
            if len > self.max_packet {
                return Err(CodecError::PacketTooLarge {
                    id,
                    len,
                    max: self.max_packet,
                });
            }
            packet.data.extend_from_slice(frame.data);
            let done = frame.done;
            self.pos += used;
            tracing::trace!(%id, kind = %packet.kind, len = used, done, "drpc frame");
            if done {
                self.floor = (id.stream, u128::from(id.message) + 1);
                return Ok(Some(packet));
            }
            self.floor = (id.stream, u128::from(id.message));
            self.partial = Some(packet);
        }
    }
}

#[cfg(test)]
mod tests;
