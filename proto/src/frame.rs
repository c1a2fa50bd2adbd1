//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes of protobuf
//! (codervpn-protocol.md §3). Sans-IO: bytes in, frames out.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Largest accepted frame body (16 MiB). A frame of exactly this size is accepted.
pub const MAX_FRAME_LEN: usize = 0x100_0000;
const PREFIX_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message length {len} exceeds max {MAX_FRAME_LEN}")]
    TooLong { len: usize },
    #[error("refusing to send an empty {kind} (a zero-length frame)")]
    Empty { kind: &'static str },
    #[error("failed to unmarshal {kind}: {source}")]
    Decode {
        kind: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("stream ended inside a frame: {have} of {want} bytes")]
    Truncated { have: usize, want: usize },
}

/// Appends one frame holding `msg` to `out`. Nothing is appended on error.
pub fn encode_frame<M: Message>(
    msg: &M,
    kind: &'static str,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    let len = msg.encoded_len();
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong { len });
    }
    if len == 0 {
        return Err(FrameError::Empty { kind });
    }
    out.reserve(PREFIX_LEN + len);
    // The length fits in u32: it is at most MAX_FRAME_LEN.
    out.put_u32(len as u32);
    msg.encode_raw(out);
    Ok(())
}

/// Decodes one frame body.
pub fn decode_message<M: Message + Default>(
    body: &[u8],
    kind: &'static str,
) -> Result<M, FrameError> {
    M::decode(body).map_err(|source| FrameError::Decode { kind, source })
}

/// Splits a byte stream into frame bodies.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The buffer to read more bytes into.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame body, if one is buffered. An oversize length is an error as
    /// soon as its prefix has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some(prefix) = self.buf.get(..PREFIX_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLong { len });
        }
        if self.buf.len() < PREFIX_LEN + len {
            self.buf.reserve(PREFIX_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Called at end of stream: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let want = match self.buf.get(..PREFIX_LEN) {
            Some(p) => PREFIX_LEN + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
            None => PREFIX_LEN,
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            want,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vpn;

    fn frames(dec: &mut FrameDecoder) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(f) = dec.next_frame().unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn frame_is_big_endian_length_then_body() {
        let msg = vpn::TunnelMessage {
            rpc: Some(vpn::Rpc {
                msg_id: 0,
                response_to: 7,
            }),
            msg: None,
        };
        let mut out = BytesMut::new();
        encode_frame(&msg, "TunnelMessage", &mut out).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 4, 0x0a, 0x02, 0x10, 0x07]);
    }

    #[test]
    fn decoder_reassembles_byte_at_a_time() {
        let mut wire = BytesMut::new();
        for id in 1..=3 {
            let m = vpn::Rpc {
                msg_id: id,
                response_to: 0,
            };
            encode_frame(&m, "RPC", &mut wire).unwrap();
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            dec.push(&[*b]);
            got.extend(frames(&mut dec));
        }
        let ids: Vec<u64> = got
            .iter()
            .map(|f| decode_message::<vpn::Rpc>(f, "RPC").unwrap().msg_id)
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        dec.finish().unwrap();
    }

    // checklist #21
    #[test]
    fn oversize_length_is_an_error_before_the_body_arrives() {
        let mut dec = FrameDecoder::new();
        dec.push(&0x0100_0001u32.to_be_bytes());
        assert!(matches!(
            dec.next_frame(),
            Err(FrameError::TooLong { len: 0x0100_0001 })
        ));
    }

    #[test]
    fn length_of_exactly_16_mib_is_accepted() {
        let mut dec = FrameDecoder::new();
        dec.push(&0x0100_0000u32.to_be_bytes());
        assert!(dec.next_frame().unwrap().is_none());
        dec.push(&vec![0u8; MAX_FRAME_LEN]);
        assert_eq!(dec.next_frame().unwrap().unwrap().len(), MAX_FRAME_LEN);
    }

    // checklist #23
    #[test]
    fn zero_length_frame_decodes_to_an_empty_message() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0, 0, 0]);
        let body = dec.next_frame().unwrap().unwrap();
        let msg: vpn::ManagerMessage = decode_message(&body, "ManagerMessage").unwrap();
        assert_eq!(msg, vpn::ManagerMessage::default());
    }

    #[test]
    fn empty_message_is_never_sent() {
        let mut out = BytesMut::new();
        let err = encode_frame(&vpn::TunnelMessage::default(), "TunnelMessage", &mut out);
        assert!(matches!(err, Err(FrameError::Empty { .. })));
        assert!(out.is_empty());
    }

    // checklist #22
    #[test]
    fn oversize_message_fails_locally_and_writes_nothing() {
        let msg = vpn::Log {
            message: "x".repeat(MAX_FRAME_LEN),
            ..Default::default()
        };
        let mut out = BytesMut::new();
        assert!(matches!(
            encode_frame(&msg, "Log", &mut out),
            Err(FrameError::TooLong { .. })
        ));
        assert!(out.is_empty());
    }

    // checklist #20
    #[test]
    fn field_number_zero_is_a_decode_error() {
        let err = decode_message::<vpn::ManagerMessage>(&[0u8; 10], "ManagerMessage").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("failed to unmarshal ManagerMessage"),
            "{err}"
        );
    }

    // checklist #25
    #[test]
    fn eof_inside_prefix_or_body_is_truncation() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0]);
        assert!(dec.next_frame().unwrap().is_none());
        assert!(matches!(
            dec.finish(),
            Err(FrameError::Truncated { have: 2, want: 4 })
        ));
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0, 0, 9, 1]);
        assert!(dec.next_frame().unwrap().is_none());
        assert!(matches!(
            dec.finish(),
            Err(FrameError::Truncated { have: 5, want: 13 })
        ));
    }
}
