//! Fuzzes the dRPC packet reader and the call state machine of `codervpn-engine`
//! (`engine/src/session/rpc/{codec,call}.rs`, compiled in directly: both are sans-IO and
//! need only `thiserror` and `tracing`, so the fuzzer does not build the whole engine).
//!
//! Input layout: `[schedule] ++ stream`.
//! * `schedule`: the low 3 bits pick the largest chunk the stream is cut into (1, 2, 3, 7,
//!   16, 64, 512 bytes or everything at once); the high 5 bits seed the generator of chunk
//!   lengths.
//! * `stream`: bytes a peer sends on one yamux stream.
//!
//! Checks:
//! * no panic, whatever the input;
//! * `PacketReader` (with the 4 MiB limit, and with a 300-byte limit so that small inputs
//!   reach the size checks) yields exactly the packets and the error that a separate,
//!   whole-stream reference model of the rules computes, for every chunking; after an
//!   error it keeps returning that error;
//! * every packet re-encodes with `put_packet` into bytes that read back to the same
//!   packets (ids only go up, so the re-encoded stream is valid);
//! * a client and a server `Call` fed the stream: events follow the protocol (a server's
//!   first event is `Invoked`, nothing after a terminal event), an error terminates the
//!   call, and a server answers bad input with exactly one error packet whose text starts
//!   `protocol error: `.

#![no_main]

use libfuzzer_sys::fuzz_target;

// At the crate root, so that `super::codec` in call.rs finds codec.rs.
#[allow(dead_code)]
#[path = "../../src/session/rpc/call.rs"]
mod call;
#[allow(dead_code)]
#[path = "../../src/session/rpc/codec.rs"]
mod codec;

use call::{Call, CallEvent};
use codec::{CodecError, Id, Kind, MAX_PACKET_SIZE, Packet, PacketReader};

const SMALL_LIMIT: usize = 300;

/// What a whole stream means.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    packets: Vec<Packet>,
    error: Option<CodecError>,
}

/// Reference varint: `Err` as the reader's errors, `Ok(None)` when the input ends.
fn varint(b: &[u8], field: &'static str) -> Result<Option<(u64, usize)>, CodecError> {
    let mut v: u128 = 0;
    for i in 0..10 {
        let Some(&byte) = b.get(i) else {
            return Ok(None);
        };
        v |= u128::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return match u64::try_from(v) {
                Ok(v) => Ok(Some((v, i + 1))),
                Err(_) => Err(CodecError::VarintOverflow { field }),
            };
        }
        if i == 9 && byte & 0x7f > 1 {
            return Err(CodecError::VarintOverflow { field });
        }
    }
    Err(CodecError::VarintTooLong { field })
}

/// The reader's rules applied to the whole stream at once.
fn model(stream: &[u8], max: usize) -> Outcome {
    let mut out = Outcome {
        packets: Vec::new(),
        error: None,
    };
    let mut at = 0;
    // Lowest acceptable id, and whether it may be equal (an unfinished packet's id).
    let mut floor = Id::new(1, 1);
    let mut floor_open = true;
    let mut partial: Option<Packet> = None;
    loop {
        let mut p = at + 1;
        if p > stream.len() {
            return out;
        }
        let control = stream[at];
        let mut fields = [0u64; 3];
        for (i, name) in ["stream id", "message id", "data length"]
            .into_iter()
            .enumerate()
        {
            match varint(&stream[p.min(stream.len())..], name) {
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
                Ok(None) => return out,
                Ok(Some((v, n))) => {
                    fields[i] = v;
                    p += n;
                }
            }
        }
        let id = Id::new(fields[0], fields[1]);
        if fields[2] > max as u64 {
            out.error = Some(CodecError::FrameTooLarge {
                id,
                len: fields[2],
                max,
            });
            return out;
        }
        let len = fields[2] as usize;
        if stream.len() - p < len {
            return out;
        }
        let data = &stream[p..p + len];
        at = p + len;
        let kind = Kind::from_control(control);
        let below = if floor_open { id < floor } else { id <= floor };
        if below {
            let min = if floor_open {
                floor
            } else {
                Id::new(floor.stream, floor.message.saturating_add(1))
            };
            out.error = Some(CodecError::IdNotMonotonic { got: id, min });
            return out;
        }
        let mut packet = match partial.take() {
            Some(pk) if pk.id == id => {
                if pk.kind != kind {
                    out.error = Some(CodecError::KindChanged {
                        id,
                        was: pk.kind,
                        now: kind,
                    });
                    return out;
                }
                pk
            }
            _ => Packet {
                id,
                kind,
                control: false,
                data: Vec::new(),
            },
        };
        packet.control |= control & 0x80 != 0;
        if packet.data.len() + len > max {
            out.error = Some(CodecError::PacketTooLarge {
                id,
                len: packet.data.len() + len,
                max,
            });
            return out;
        }
        packet.data.extend_from_slice(data);
        floor = id;
        if control & 0x01 != 0 {
            floor_open = false;
            out.packets.push(packet);
        } else {
            floor_open = true;
            partial = Some(packet);
        }
    }
}

/// Chunk lengths chosen by the schedule byte.
struct Chunks {
    max: usize,
    state: u32,
}

impl Chunks {
    fn new(schedule: u8) -> Self {
        let max = [1, 2, 3, 7, 16, 64, 512, usize::MAX][usize::from(schedule & 7)];
        Self {
            max,
            state: u32::from(schedule >> 3) | 0x9e37_0000,
        }
    }

    fn next(&mut self) -> usize {
        if self.max == usize::MAX {
            return usize::MAX;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        1 + (self.state as usize % self.max)
    }

    fn split<'a>(&mut self, mut rest: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        while !rest.is_empty() {
            let n = self.next().min(rest.len());
            out.push(&rest[..n]);
            rest = &rest[n..];
        }
        out
    }
}

fn read_chunked(chunks: &[&[u8]], max: usize) -> Outcome {
    let mut r = PacketReader::with_max_packet_size(max);
    let mut out = Outcome {
        packets: Vec::new(),
        error: None,
    };
    for chunk in chunks {
        r.push(chunk);
        loop {
            match r.next_packet() {
                Ok(Some(p)) => out.packets.push(p),
                Ok(None) => break,
                Err(e) => {
                    // Poisoned: the same error again, whatever comes next.
                    r.push(&[0x05, 1, 1, 0]);
                    assert_eq!(r.next_packet().as_ref().err(), Some(&e));
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    out
}

fn check_reencoding(packets: &[Packet], max: usize) {
    let mut wire = Vec::new();
    for p in packets {
        codec::put_packet(&mut wire, p.id, p.kind, p.control, &p.data);
    }
    let again = read_chunked(&[&wire], max);
    assert_eq!(again.error, None);
    assert_eq!(again.packets, packets);
}

fn check_call(mut call: Call, chunks: &[&[u8]], server: bool) {
    let mut events = Vec::new();
    let mut failed = false;
    for chunk in chunks {
        if call.handle_input(chunk).is_err() {
            failed = true;
            assert!(call.is_finished());
            break;
        }
        events.extend(std::iter::from_fn(|| call.poll_event()));
    }
    events.extend(std::iter::from_fn(|| call.poll_event()));
    let terminal = events.iter().position(|e| {
        matches!(
            e,
            CallEvent::RemoteError { .. } | CallEvent::Canceled | CallEvent::Closed
        )
    });
    if let Some(i) = terminal {
        assert_eq!(
            i + 1,
            events.len(),
            "events after a terminal event: {events:?}"
        );
        assert!(call.is_finished());
    }
    if server {
        if let Some(first) = events.first() {
            assert!(matches!(first, CallEvent::Invoked { .. }), "{events:?}");
        }
        assert!(
            events[1.min(events.len())..]
                .iter()
                .all(|e| !matches!(e, CallEvent::Invoked { .. }))
        );
        let out = call.poll_transmit().unwrap_or_default();
        if failed && terminal.is_none() {
            let back = read_chunked(&[&out], MAX_PACKET_SIZE);
            assert_eq!(back.error, None);
            assert_eq!(back.packets.len(), 1, "{back:?}");
            assert_eq!(back.packets[0].kind, Kind::Error);
            let (code, text) = codec::parse_error_data(&back.packets[0].data);
            assert_eq!(code, 0);
            assert!(text.starts_with("protocol error: "), "{text}");
        }
    } else {
        assert!(
            events
                .iter()
                .all(|e| !matches!(e, CallEvent::Invoked { .. }))
        );
    }
    // Whatever happened, nothing is sent after the call ended, and the call can be ended.
    call.close();
    call.cancel();
    if call.is_finished() {
        call.poll_transmit();
        assert!(!call.send_message(b"late"));
        assert_eq!(call.poll_transmit(), None);
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&schedule, stream)) = input.split_first() else {
        return;
    };
    let chunks = Chunks::new(schedule).split(stream);
    for max in [MAX_PACKET_SIZE, SMALL_LIMIT] {
        let want = model(stream, max);
        let got = read_chunked(&chunks, max);
        assert_eq!(got, want, "limit {max}");
        check_reencoding(&got.packets, max);
    }
    check_call(Call::client("/fuzz/Method"), &chunks, false);
    check_call(Call::server(), &chunks, true);
});
