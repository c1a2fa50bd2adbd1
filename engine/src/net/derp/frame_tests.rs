//! Frame codec tests: every type, every limit, truncation, garbage.

use std::borrow::Cow;
use std::time::Duration;

use bytes::BytesMut;

use super::*;
use crate::net::derp::decoder::{FrameDecoder, Policy};

fn key(b: u8) -> NodePublicKey {
    NodePublicKey::from_bytes([b; 32])
}

fn encode(f: &Frame<'_>) -> BytesMut {
    let mut out = BytesMut::new();
    f.encode(&mut out).unwrap();
    out
}

fn decode_one(bytes: &[u8], policy: Policy) -> RawFrame {
    let mut d = FrameDecoder::new();
    d.push(bytes);
    let raw = d.next_frame(policy).unwrap().unwrap();
    assert_eq!(d.buffered(), 0);
    raw
}

/// Header bytes for a frame of `typ` declaring `len`.
fn header(typ: u8, len: u32) -> Vec<u8> {
    let mut h = vec![typ];
    h.extend_from_slice(&len.to_be_bytes());
    h
}

#[test]
fn every_frame_type_round_trips() {
    let sealed = [7u8; 40];
    let s2c = [
        Frame::ServerKey { key: key(1) },
        Frame::ServerInfo { sealed: &sealed },
        Frame::RecvPacket {
            src: key(2),
            packet: b"hello",
        },
        Frame::KeepAlive,
        Frame::PeerGone {
            key: key(3),
            reason: PeerGoneReason::Disconnected,
        },
        Frame::PeerGone {
            key: key(3),
            reason: PeerGoneReason::NotHere,
        },
        Frame::PeerGone {
            key: key(3),
            reason: PeerGoneReason::Other(9),
        },
        Frame::PeerPresent { key: key(4) },
        Frame::Ping { data: *b"12345678" },
        Frame::Pong { data: *b"87654321" },
        Frame::Health {
            problem: Cow::Borrowed("duplicate connection"),
        },
        Frame::Health {
            problem: Cow::Borrowed(""),
        },
        Frame::Restarting {
            reconnect_in: Duration::from_millis(1500),
            try_for: Duration::from_secs(30),
        },
        Frame::Unknown {
            typ: 0x7f,
            payload: b"future",
        },
    ];
    for f in &s2c {
        let raw = decode_one(&encode(f), Policy::Client);
        assert_eq!(raw.typ, f.typ());
        assert_eq!(&raw.parse().unwrap(), f);
    }
    let c2s = [
        Frame::SendPacket {
            dst: key(5),
            packet: b"world",
        },
        Frame::SendPacket {
            dst: key(5),
            packet: b"",
        },
        Frame::NotePreferred { preferred: true },
        Frame::NotePreferred { preferred: false },
        Frame::ForwardPacket {
            src: key(6),
            dst: key(7),
            packet: b"fwd",
        },
        Frame::WatchConns,
        Frame::ClosePeer { key: key(8) },
        Frame::Ping { data: *b"abcdefgh" },
    ];
    for f in &c2s {
        let raw = decode_one(&encode(f), Policy::ServerRunning);
        assert_eq!(&raw.parse().unwrap(), f);
    }
    let info = Frame::ClientInfo {
        key: key(9),
        sealed: &sealed,
    };
    let raw = decode_one(&encode(&info), Policy::ServerHandshake);
    assert_eq!(raw.parse().unwrap(), info);
}

#[test]
fn header_is_type_byte_then_big_endian_length() {
    assert_eq!(&encode(&Frame::KeepAlive)[..], &[0x06, 0, 0, 0, 0]);
    assert_eq!(
        &encode(&Frame::Ping {
            data: [1, 2, 3, 4, 5, 6, 7, 8]
        })[..],
        &[0x12, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(
        &encode(&Frame::Restarting {
            reconnect_in: Duration::from_millis(258),
            try_for: Duration::from_millis(1)
        })[..],
        &[0x15, 0, 0, 0, 8, 0, 0, 1, 2, 0, 0, 0, 1]
    );
}

#[test]
fn server_key_frame_starts_with_derp_key_magic() {
    let b = encode(&Frame::ServerKey { key: key(1) });
    assert_eq!(&b[..5], &[0x01, 0, 0, 0, 40]);
    assert_eq!(&b[5..13], &[0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91]);
    assert_eq!(&MAGIC, "DERP🔑".as_bytes());
}

#[test]
fn server_key_with_wrong_magic_or_short_is_refused() {
    let mut p = MAGIC.to_vec();
    p[0] = b'X';
    p.extend_from_slice(&[0; 32]);
    assert!(matches!(
        Frame::parse(0x01, &p),
        Err(FrameError::BadMagic { .. })
    ));
    assert!(matches!(
        Frame::parse(0x01, &p[..39]),
        Err(FrameError::Short { min: 40, .. })
    ));
}

#[test]
fn server_key_extra_bytes_are_ignored() {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&[3; 32]);
    p.extend_from_slice(b"future use");
    assert_eq!(
        Frame::parse(0x01, &p).unwrap(),
        Frame::ServerKey { key: key(3) }
    );
}

#[test]
fn client_treats_frame_over_1_mib_as_corrupt() {
    let mut d = FrameDecoder::new();
    d.push(&header(0x05, (1 << 20) + 1));
    assert_eq!(
        d.next_frame(Policy::Client),
        Err(FrameError::TooLong {
            typ: 0x05,
            len: (1 << 20) + 1,
            max: 1 << 20,
            side: "client read limit"
        })
    );
    let mut d = FrameDecoder::new();
    let mut frame = header(0x7f, 1 << 20);
    frame.resize(5 + (1 << 20), 0);
    d.push(&frame);
    assert_eq!(
        d.next_frame(Policy::Client).unwrap().unwrap().payload.len(),
        1 << 20
    );
}

#[test]
fn server_accepts_client_info_of_56_bytes_to_256_kib() {
    let check = |len: u32| {
        let mut d = FrameDecoder::new();
        d.push(&header(0x02, len));
        d.next_frame(Policy::ServerHandshake)
    };
    assert!(matches!(check(55), Err(FrameError::Short { min: 56, .. })));
    assert_eq!(check(56), Ok(None)); // admitted, payload pending
    assert_eq!(check(256 << 10), Ok(None));
    assert!(matches!(
        check((256 << 10) + 1),
        Err(FrameError::TooLong { max: 262_144, .. })
    ));
}

#[test]
fn server_refuses_any_frame_before_client_info() {
    let mut d = FrameDecoder::new();
    d.push(&encode(&Frame::Ping { data: [0; 8] }));
    assert_eq!(
        d.next_frame(Policy::ServerHandshake),
        Err(FrameError::Unexpected {
            expected: "client info",
            got: 0x12
        })
    );
}

#[test]
fn server_refuses_send_packet_over_64_kib() {
    let mut d = FrameDecoder::new();
    d.push(&header(0x04, 32 + (64 << 10) + 1));
    assert!(matches!(
        d.next_frame(Policy::ServerRunning),
        Err(FrameError::TooLong { .. })
    ));
    let mut d = FrameDecoder::new();
    d.push(&header(0x04, 32 + (64 << 10)));
    assert_eq!(d.next_frame(Policy::ServerRunning), Ok(None));
    let big = vec![0u8; 32 + (64 << 10) + 1];
    assert!(matches!(
        Frame::parse(0x04, &big),
        Err(FrameError::PacketTooLarge { len: 65_537, .. })
    ));
}

#[test]
fn server_refuses_ping_over_1000_bytes() {
    let mut d = FrameDecoder::new();
    d.push(&header(0x12, 1001));
    assert!(matches!(
        d.next_frame(Policy::ServerRunning),
        Err(FrameError::TooLong { max: 1000, .. })
    ));
}

#[test]
fn encoder_refuses_packet_over_64_kib() {
    let mut out = BytesMut::new();
    let ok = vec![0u8; 64 << 10];
    encode_send_packet(&mut out, &key(1), &ok).unwrap();
    let big = vec![0u8; (64 << 10) + 1];
    assert!(matches!(
        encode_send_packet(&mut out, &key(1), &big),
        Err(FrameError::PacketTooLarge { .. })
    ));
    assert!(matches!(
        encode_recv_packet(&mut out, &key(1), &big),
        Err(FrameError::PacketTooLarge { .. })
    ));
    assert_eq!(out.len(), 5 + 32 + (64 << 10));
}

#[test]
fn encoder_never_writes_a_frame_over_10_mib() {
    let mut out = BytesMut::new();
    let max = vec![0u8; 10 << 20];
    Frame::Unknown {
        typ: 0x7f,
        payload: &max,
    }
    .encode(&mut out)
    .unwrap();
    out.clear();
    let over = vec![0u8; (10 << 20) + 1];
    assert_eq!(
        Frame::Health {
            problem: String::from_utf8_lossy(&over)
        }
        .encode(&mut out),
        Err(FrameError::WriteTooLarge {
            len: (10 << 20) + 1
        })
    );
    assert!(out.is_empty());
}

#[test]
fn server_skips_unknown_frames_of_any_length_without_buffering() {
    let mut d = FrameDecoder::new();
    d.push(&header(0x7f, u32::MAX));
    assert_eq!(d.next_frame(Policy::ServerRunning), Ok(None));
    for _ in 0..100 {
        d.push(&[0u8; 4096]);
        assert_eq!(d.buffered(), 0);
    }
    let mut d = FrameDecoder::new();
    let mut stream = header(0x05, 10);
    stream.extend_from_slice(&[1; 10]);
    stream.extend_from_slice(&encode(&Frame::Ping { data: [2; 8] }));
    for b in &stream {
        d.push(&[*b]);
    }
    let raw = d.next_frame(Policy::ServerRunning).unwrap().unwrap();
    assert_eq!(raw.parse().unwrap(), Frame::Ping { data: [2; 8] });
}

#[test]
fn truncated_input_yields_no_frame_until_complete() {
    let bytes = encode(&Frame::RecvPacket {
        src: key(1),
        packet: b"abc",
    });
    let mut d = FrameDecoder::new();
    for (i, b) in bytes.iter().enumerate() {
        assert_eq!(d.next_frame(Policy::Client), Ok(None), "after {i} bytes");
        d.push(&[*b]);
    }
    assert!(d.next_frame(Policy::Client).unwrap().is_some());
    assert_eq!(d.next_frame(Policy::Client), Ok(None));
}

#[test]
fn several_frames_in_one_push_come_out_in_order() {
    let mut bytes = encode(&Frame::KeepAlive);
    bytes.extend_from_slice(&encode(&Frame::PeerPresent { key: key(1) }));
    bytes.extend_from_slice(&encode(&Frame::Health {
        problem: "x".into(),
    }));
    let mut d = FrameDecoder::new();
    d.push(&bytes);
    let types: Vec<u8> = std::iter::from_fn(|| d.next_frame(Policy::Client).unwrap())
        .map(|f| f.typ)
        .collect();
    assert_eq!(types, vec![0x06, 0x09, 0x14]);
}

#[test]
fn peer_gone_without_reason_byte_means_disconnected() {
    assert_eq!(
        Frame::parse(0x08, &[4; 32]).unwrap(),
        Frame::PeerGone {
            key: key(4),
            reason: PeerGoneReason::Disconnected
        }
    );
    let mut p = vec![4; 32];
    p.push(1);
    assert_eq!(
        Frame::parse(0x08, &p).unwrap(),
        Frame::PeerGone {
            key: key(4),
            reason: PeerGoneReason::NotHere
        }
    );
}

#[test]
fn short_and_wrong_size_payloads_are_typed_errors() {
    assert_eq!(
        Frame::parse(0x12, &[0; 7]),
        Err(FrameError::Short {
            kind: "ping",
            len: 7,
            min: 8
        })
    );
    assert_eq!(
        Frame::parse(0x13, &[0; 7]),
        Err(FrameError::Short {
            kind: "pong",
            len: 7,
            min: 8
        })
    );
    assert_eq!(
        Frame::parse(0x05, &[0; 31]),
        Err(FrameError::Short {
            kind: "recv packet",
            len: 31,
            min: 32
        })
    );
    assert_eq!(
        Frame::parse(0x04, &[0; 31]),
        Err(FrameError::Short {
            kind: "send packet",
            len: 31,
            min: 32
        })
    );
    assert_eq!(
        Frame::parse(0x0a, &[0; 63]),
        Err(FrameError::Short {
            kind: "forward packet",
            len: 63,
            min: 64
        })
    );
    assert_eq!(
        Frame::parse(0x03, &[0; 23]),
        Err(FrameError::Short {
            kind: "server info",
            len: 23,
            min: 24
        })
    );
    assert_eq!(
        Frame::parse(0x02, &[0; 55]),
        Err(FrameError::Short {
            kind: "client info",
            len: 55,
            min: 56
        })
    );
    assert_eq!(
        Frame::parse(0x09, &[0; 31]),
        Err(FrameError::Short {
            kind: "peer present",
            len: 31,
            min: 32
        })
    );
    assert_eq!(
        Frame::parse(0x15, &[0; 7]),
        Err(FrameError::Short {
            kind: "restarting",
            len: 7,
            min: 8
        })
    );
    assert_eq!(
        Frame::parse(0x07, &[1, 1]),
        Err(FrameError::WrongSize {
            kind: "note preferred",
            len: 2,
            want: 1
        })
    );
    assert_eq!(
        Frame::parse(0x10, &[0]),
        Err(FrameError::WrongSize {
            kind: "watch conns",
            len: 1,
            want: 0
        })
    );
    assert_eq!(
        Frame::parse(0x11, &[0; 33]),
        Err(FrameError::WrongSize {
            kind: "close peer",
            len: 33,
            want: 32
        })
    );
}

#[test]
fn error_messages_say_what_failed() {
    let e = FrameError::TooLong {
        typ: 5,
        len: 2_000_000,
        max: 1 << 20,
        side: "client read limit",
    };
    assert_eq!(
        e.to_string(),
        "frame type 0x05 declares 2000000 bytes, over the 1048576-byte limit (client read limit)"
    );
}

#[test]
fn garbage_never_panics_under_any_policy() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..300 {
        let len = (round * 7) % 600;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Keep lengths small often enough that whole frames occur.
                if x.is_multiple_of(5) { 0 } else { x as u8 }
            })
            .collect();
        for policy in [
            Policy::Client,
            Policy::ServerHandshake,
            Policy::ServerRunning,
        ] {
            let mut d = FrameDecoder::new();
            d.push(&bytes);
            while let Ok(Some(raw)) = d.next_frame(policy) {
                if let Ok(f) = raw.parse() {
                    let mut out = BytesMut::new();
                    let _ = f.encode(&mut out);
                }
            }
        }
    }
}
