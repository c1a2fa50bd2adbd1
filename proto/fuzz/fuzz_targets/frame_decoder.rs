//! Fuzzes the sans-IO frame layer of `codervpn-proto`.
//!
//! Input layout: `[schedule] ++ stream`.
//! * `schedule` (one byte) picks how `stream` is cut into the chunks handed to
//!   [`FrameDecoder`]: the low 3 bits choose the largest chunk (1, 2, 3, 7, 16, 64, 512 bytes
//!   or "everything at once"), the high 5 bits seed the generator of chunk lengths. Chunks
//!   alternate between `push` and writing into `buffer()` (as `Connection` does with
//!   `read_buf`).
//! * `stream` is the byte stream a peer sends after the handshake line.
//!
//! Checks:
//! * no panic anywhere;
//! * the decoder yields exactly the frames, `TooLong` error and `finish` result that a
//!   reference model computes from the whole stream, whatever the chunking;
//! * every frame that decodes as `vpn::ManagerMessage` or `vpn::TunnelMessage` re-encodes
//!   with `encode_frame` to a frame that decodes back to an equal message, and the
//!   encoding is canonical (encoding the second decode gives the same bytes).

#![no_main]

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use codervpn_proto::frame::{
    FrameDecoder, FrameError, MAX_FRAME_LEN, decode_message, encode_frame,
};
use codervpn_proto::vpn;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const PREFIX_LEN: usize = 4;

/// What draining a stream produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Bytes>,
    /// `Some(len)` if a `TooLong { len }` stopped the stream.
    too_long: Option<usize>,
    /// `finish()` after the last byte (only when no `TooLong`): `None` for Ok, else
    /// `(have, want)` of `Truncated`.
    truncated: Option<(usize, usize)>,
}

/// The reference: what the stream means, computed on the whole of it at once.
fn model(stream: &[u8]) -> Outcome {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        if rest.len() < PREFIX_LEN {
            let truncated = (!rest.is_empty()).then_some((rest.len(), PREFIX_LEN));
            return Outcome {
                frames,
                too_long: None,
                truncated,
            };
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Outcome {
                frames,
                too_long: Some(len),
                truncated: None,
            };
        }
        if rest.len() < PREFIX_LEN + len {
            return Outcome {
                frames,
                too_long: None,
                truncated: Some((rest.len(), PREFIX_LEN + len)),
            };
        }
        frames.push(Bytes::copy_from_slice(&rest[PREFIX_LEN..PREFIX_LEN + len]));
        at += PREFIX_LEN + len;
    }
}

/// Chunk lengths chosen by the schedule byte.
struct Chunks {
    max: usize,
    state: u64,
}

impl Chunks {
    fn new(schedule: u8) -> Self {
        const MAX: [usize; 8] = [1, 2, 3, 7, 16, 64, 512, usize::MAX];
        Self {
            max: MAX[usize::from(schedule & 7)],
            // xorshift64 must not start at 0.
            state: 0x9E37_79B9_7F4A_7C15 ^ u64::from(schedule >> 3),
        }
    }

    fn next_len(&mut self) -> usize {
        if self.max == usize::MAX {
            return usize::MAX;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        1 + (self.state % self.max as u64) as usize
    }
}

/// Feeds `stream` chunk by chunk, draining frames after each chunk.
fn run(stream: &[u8], schedule: u8) -> Outcome {
    let mut dec = FrameDecoder::new();
    let mut chunks = Chunks::new(schedule);
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut via_buffer = false;
    while !rest.is_empty() {
        let n = chunks.next_len().min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        if via_buffer {
            dec.buffer().extend_from_slice(chunk);
        } else {
            dec.push(chunk);
        }
        via_buffer = !via_buffer;
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(FrameError::TooLong { len }) => {
                    // The decoder stays stuck on the bad prefix: asking again gives the
                    // same answer and yields nothing.
                    assert!(
                        matches!(dec.next_frame(), Err(FrameError::TooLong { len: l }) if l == len)
                    );
                    return Outcome {
                        frames,
                        too_long: Some(len),
                        truncated: None,
                    };
                }
                Err(e) => panic!("next_frame returned an unexpected error: {e}"),
            }
        }
    }
    // Draining after the last chunk again must give nothing new.
    assert!(matches!(dec.next_frame(), Ok(None)));
    let truncated = match dec.finish() {
        Ok(()) => None,
        Err(FrameError::Truncated { have, want }) => {
            let _ = FrameError::Truncated { have, want }.to_string();
            Some((have, want))
        }
        Err(e) => panic!("finish returned an unexpected error: {e}"),
    };
    Outcome {
        frames,
        too_long: None,
        truncated,
    }
}

/// Decodes `body` as `M`; if that works, re-encodes, re-frames and re-decodes it.
fn round_trip<M: Message + Default + PartialEq + Debug>(body: &[u8], kind: &'static str) {
    let msg = match decode_message::<M>(body, kind) {
        Ok(m) => m,
        Err(e) => {
            assert!(matches!(e, FrameError::Decode { .. }), "{e:?}");
            let _ = e.to_string();
            return;
        }
    };
    let mut out = BytesMut::new();
    match encode_frame(&msg, kind, &mut out) {
        Ok(()) => {}
        Err(FrameError::Empty { .. }) => {
            assert_eq!(msg.encoded_len(), 0);
            assert_eq!(msg, M::default());
            assert!(out.is_empty(), "encode_frame wrote bytes on error");
            return;
        }
        Err(FrameError::TooLong { len }) => {
            // Possible in principle: prost may re-encode larger than it read (a negative
            // int32 written in 5 bytes comes back as 10).
            assert!(len > MAX_FRAME_LEN);
            assert!(out.is_empty(), "encode_frame wrote bytes on error");
            return;
        }
        Err(e) => panic!("encode_frame returned an unexpected error: {e}"),
    }
    let len = msg.encoded_len();
    assert_eq!(out.len(), PREFIX_LEN + len);
    assert_eq!(out[..PREFIX_LEN], (len as u32).to_be_bytes());

    let mut dec = FrameDecoder::new();
    dec.push(&out);
    let frame = match dec.next_frame() {
        Ok(Some(f)) => f,
        other => panic!("re-encoded {kind} did not come back as one frame: {other:?}"),
    };
    assert!(matches!(dec.next_frame(), Ok(None)));
    assert!(dec.finish().is_ok());
    let again: M = match decode_message(&frame, kind) {
        Ok(m) => m,
        Err(e) => panic!("re-encoded {kind} does not decode: {e}\n{msg:?}"),
    };
    assert_eq!(msg, again, "{kind} changed in a round trip");

    // vpn.proto has no maps or floats, so prost's encoding is canonical.
    let mut out2 = BytesMut::new();
    if let Err(e) = encode_frame(&again, kind, &mut out2) {
        panic!("second encode of {kind} failed: {e}");
    }
    assert_eq!(out, out2, "{kind} encoding is not stable");
}

fuzz_target!(|data: &[u8]| {
    let Some((&schedule, stream)) = data.split_first() else {
        return;
    };
    let want = model(stream);
    let got = run(stream, schedule);
    assert_eq!(
        got, want,
        "decoder disagrees with the model (schedule {schedule:#04x})"
    );

    for frame in &got.frames {
        round_trip::<vpn::ManagerMessage>(frame, "ManagerMessage");
        round_trip::<vpn::TunnelMessage>(frame, "TunnelMessage");
    }
});
