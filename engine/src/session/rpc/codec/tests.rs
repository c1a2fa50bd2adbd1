use super::*;
use codervpn_proto::tailnet::{RefreshResumeTokenRequest, RefreshResumeTokenResponse};
use prost::Message as _;

const REFRESH_PATH: &str = "/coder.tailnet.v2.Tailnet/RefreshResumeToken";

fn packet(id: Id, kind: Kind, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_packet(&mut out, id, kind, false, data);
    out
}

fn read_all(bytes: &[u8]) -> Result<Vec<Packet>, CodecError> {
    let mut r = PacketReader::new();
    r.push(bytes);
    let mut out = Vec::new();
    while let Some(p) = r.next_packet()? {
        out.push(p);
    }
    Ok(out)
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// tailnet.md §13.2: `RefreshResumeToken` on a fresh yamux stream.
#[test]
fn refresh_resume_token_example_encodes_byte_for_byte() {
    let mut client = Vec::new();
    put_packet(
        &mut client,
        Id::new(1, 1),
        Kind::Invoke,
        false,
        REFRESH_PATH.as_bytes(),
    );
    put_packet(
        &mut client,
        Id::new(1, 2),
        Kind::Message,
        false,
        &RefreshResumeTokenRequest {}.encode_to_vec(),
    );
    put_packet(&mut client, Id::new(1, 3), Kind::CloseSend, false, &[]);

    let mut want = hex("03 01 01 2c");
    want.extend_from_slice(REFRESH_PATH.as_bytes());
    want.extend_from_slice(&hex("05 01 02 00  0d 01 03 00"));
    assert_eq!(REFRESH_PATH.len(), 0x2c);
    assert_eq!(client, want);

    let response = RefreshResumeTokenResponse {
        token: "resume-token".into(),
        refresh_in: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        expires_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
    };
    let body = response.encode_to_vec();
    let mut server = Vec::new();
    put_packet(&mut server, Id::new(1, 1), Kind::Message, false, &body);
    put_packet(&mut server, Id::new(1, 2), Kind::CloseSend, false, &[]);
    let mut want = vec![0x05, 0x01, 0x01, body.len() as u8];
    want.extend_from_slice(&body);
    want.extend_from_slice(&hex("0d 01 02 00"));
    assert_eq!(server, want);
}

#[test]
fn refresh_resume_token_example_decodes_and_reencodes_exactly() {
    let mut wire = hex("03 01 01 2c");
    wire.extend_from_slice(REFRESH_PATH.as_bytes());
    wire.extend_from_slice(&hex("05 01 02 00  0d 01 03 00"));

    let packets = read_all(&wire).unwrap();
    let kinds: Vec<Kind> = packets.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [Kind::Invoke, Kind::Message, Kind::CloseSend]);
    assert_eq!(packets[0].data, REFRESH_PATH.as_bytes());
    assert!(packets[1].data.is_empty());

    let mut again = Vec::new();
    for p in &packets {
        put_packet(&mut again, p.id, p.kind, p.control, &p.data);
    }
    assert_eq!(again, wire);
}

#[test]
fn control_bytes_match_the_kind_table() {
    let table = [
        (Kind::Invoke, false, 0x03),
        (Kind::Message, false, 0x05),
        (Kind::Error, false, 0x07),
        (Kind::Cancel, true, 0x89),
        (Kind::Close, false, 0x0b),
        (Kind::CloseSend, false, 0x0d),
        (Kind::InvokeMetadata, false, 0x0f),
    ];
    for (kind, control, byte) in table {
        assert_eq!(control_byte(kind, true, control), byte, "{kind}");
        assert_eq!(Kind::from_control(byte), kind);
    }
    assert_eq!(Kind::from_control(0x7f << 1), Kind::Unknown(63));
    assert_eq!(Kind::from_control(0), Kind::Unknown(0));
}

#[test]
fn varints_round_trip_at_every_length() {
    let mut x = 1u64;
    let mut values = vec![0, 1, 127, 128, 300, u64::MAX, u64::MAX - 1];
    for _ in 0..63 {
        x <<= 1;
        values.extend([x - 1, x, x + 1]);
    }
    for v in values {
        let mut buf = Vec::new();
        put_varint(&mut buf, v);
        assert!(buf.len() <= MAX_VARINT_LEN);
        assert_eq!(read_varint(&buf, "v").unwrap(), Some((v, buf.len())), "{v}");
        // Every strict prefix asks for more.
        for cut in 0..buf.len() {
            assert_eq!(
                read_varint(&buf[..cut], "v").unwrap(),
                None,
                "{v} cut {cut}"
            );
        }
    }
    let mut buf = Vec::new();
    put_varint(&mut buf, u64::MAX);
    assert_eq!(buf.len(), 10);
    assert_eq!(buf[9], 0x01);
}

#[test]
fn varint_longer_than_ten_bytes_is_an_error() {
    let eleven = [0x80u8; 11];
    assert_eq!(
        read_varint(&eleven, "stream id"),
        Err(CodecError::VarintTooLong { field: "stream id" })
    );
    // Ten continuation bytes: already too long, even before the eleventh arrives.
    assert_eq!(
        read_varint(&eleven[..10], "stream id"),
        Err(CodecError::VarintTooLong { field: "stream id" })
    );
}

#[test]
fn varint_overflowing_64_bits_is_an_error() {
    let mut buf = vec![0xffu8; 9];
    buf.push(0x02);
    let err = read_varint(&buf, "data length").unwrap_err();
    assert_eq!(
        err,
        CodecError::VarintOverflow {
            field: "data length"
        }
    );
    assert_eq!(err.to_string(), "data length varint overflows 64 bits");
}

#[test]
fn frame_fields_come_from_the_control_byte_and_varints() {
    let mut buf = Vec::new();
    put_frame(
        &mut buf,
        &Frame {
            id: Id::new(300, 2),
            kind: Kind::Message,
            done: false,
            control: true,
            data: b"abc",
        },
    );
    assert_eq!(buf, [0x84, 0xac, 0x02, 0x02, 0x03, b'a', b'b', b'c']);
    let (frame, used) = parse_frame(&buf, MAX_PACKET_SIZE).unwrap().unwrap();
    assert_eq!(used, buf.len());
    assert_eq!(frame.id, Id::new(300, 2));
    assert_eq!(frame.kind, Kind::Message);
    assert!(!frame.done);
    assert!(frame.control);
    assert_eq!(frame.data, b"abc");
}

#[test]
fn incomplete_frames_ask_for_more_bytes() {
    let buf = packet(Id::new(1, 1), Kind::Message, b"hello");
    for cut in 0..buf.len() {
        assert_eq!(
            parse_frame(&buf[..cut], MAX_PACKET_SIZE).unwrap(),
            None,
            "cut {cut}"
        );
    }
}

#[test]
fn packets_are_split_at_64_kib_and_reassembled() {
    let data: Vec<u8> = (0..SPLIT_SIZE * 2 + 5).map(|i| i as u8).collect();
    let wire = packet(Id::new(1, 2), Kind::Message, &data);
    // Three frames: 64 KiB, 64 KiB, 5 bytes; only the last has the done bit.
    let mut at = 0;
    let mut sizes = Vec::new();
    while at < wire.len() {
        let (frame, used) = parse_frame(&wire[at..], MAX_PACKET_SIZE).unwrap().unwrap();
        sizes.push((frame.data.len(), frame.done));
        at += used;
    }
    assert_eq!(sizes, [(SPLIT_SIZE, false), (SPLIT_SIZE, false), (5, true)]);
    let packets = read_all(&wire).unwrap();
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].data, data);
}

#[test]
fn empty_packet_is_one_empty_done_frame() {
    assert_eq!(packet(Id::new(1, 3), Kind::CloseSend, &[]), [0x0d, 1, 3, 0]);
}

#[test]
fn reassembly_works_one_byte_at_a_time() {
    let mut wire = packet(Id::new(1, 1), Kind::Invoke, b"/a/b");
    put_packet_split(
        &mut wire,
        Id::new(1, 2),
        Kind::Message,
        false,
        b"0123456789",
        3,
    );
    let mut r = PacketReader::new();
    let mut got = Vec::new();
    for b in &wire {
        r.push(std::slice::from_ref(b));
        while let Some(p) = r.next_packet().unwrap() {
            got.push(p);
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].data, b"0123456789");
    assert!(!r.in_packet());
}

#[test]
fn packet_over_4_mib_is_refused() {
    // Frames of 64 KiB: the packet passes the limit without any single frame doing so.
    let data = vec![0u8; MAX_PACKET_SIZE + 1];
    let wire = packet(Id::new(1, 1), Kind::Message, &data);
    let err = read_all(&wire).unwrap_err();
    assert!(
        matches!(err, CodecError::PacketTooLarge { len, max: MAX_PACKET_SIZE, .. } if len > MAX_PACKET_SIZE),
        "{err}"
    );
    // Exactly 4 MiB is fine.
    let wire = packet(Id::new(1, 1), Kind::Message, &data[..MAX_PACKET_SIZE]);
    assert_eq!(read_all(&wire).unwrap()[0].data.len(), MAX_PACKET_SIZE);
}

#[test]
fn frame_announcing_over_4_mib_is_refused_before_its_data_arrives() {
    let mut wire = vec![0x05, 0x01, 0x01];
    put_varint(&mut wire, MAX_PACKET_SIZE as u64 + 1);
    let mut r = PacketReader::new();
    r.push(&wire);
    let err = r.next_packet().unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("4194305 data bytes"), "{err}");
}

#[test]
fn ids_going_backwards_are_an_error() {
    let mut wire = packet(Id::new(1, 2), Kind::Message, b"x");
    wire.extend(packet(Id::new(1, 1), Kind::Message, b"y"));
    let err = read_all(&wire).unwrap_err();
    assert_eq!(
        err,
        CodecError::IdNotMonotonic {
            got: Id::new(1, 1),
            min: Id::new(1, 3)
        }
    );
}

#[test]
fn repeating_a_finished_packets_id_is_an_error() {
    let mut wire = packet(Id::new(1, 1), Kind::Message, b"x");
    wire.extend(packet(Id::new(1, 1), Kind::Message, b"x"));
    assert!(matches!(
        read_all(&wire),
        Err(CodecError::IdNotMonotonic { .. })
    ));
}

#[test]
fn ids_start_at_stream_1_message_1() {
    for id in [Id::new(0, 5), Id::new(1, 0)] {
        let err = read_all(&packet(id, Kind::Message, b"")).unwrap_err();
        assert!(
            matches!(err, CodecError::IdNotMonotonic { .. }),
            "{id}: {err}"
        );
    }
}

#[test]
fn ids_may_skip_forward() {
    let mut wire = packet(Id::new(1, 1), Kind::Invoke, b"/x");
    wire.extend(packet(Id::new(1, 7), Kind::Message, b""));
    wire.extend(packet(Id::new(4, 1), Kind::Message, b""));
    assert_eq!(read_all(&wire).unwrap().len(), 3);
}

#[test]
fn higher_id_drops_an_unfinished_packet() {
    let mut wire = Vec::new();
    put_frame(
        &mut wire,
        &Frame {
            id: Id::new(1, 1),
            kind: Kind::Message,
            done: false,
            control: false,
            data: b"lost",
        },
    );
    wire.extend(packet(Id::new(1, 2), Kind::Message, b"kept"));
    let packets = read_all(&wire).unwrap();
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].data, b"kept");
}

#[test]
fn kind_change_inside_a_packet_is_an_error() {
    let mut wire = Vec::new();
    let first = Frame {
        id: Id::new(1, 1),
        kind: Kind::Message,
        done: false,
        control: false,
        data: b"a",
    };
    put_frame(&mut wire, &first);
    put_frame(
        &mut wire,
        &Frame {
            kind: Kind::Error,
            done: true,
            ..first
        },
    );
    assert_eq!(
        read_all(&wire).unwrap_err(),
        CodecError::KindChanged {
            id: Id::new(1, 1),
            was: Kind::Message,
            now: Kind::Error
        }
    );
}

#[test]
fn control_bit_on_any_frame_marks_the_packet() {
    let mut wire = Vec::new();
    let first = Frame {
        id: Id::new(1, 1),
        kind: Kind::Unknown(40),
        done: false,
        control: true,
        data: b"a",
    };
    put_frame(&mut wire, &first);
    put_frame(
        &mut wire,
        &Frame {
            done: true,
            control: false,
            ..first
        },
    );
    let p = &read_all(&wire).unwrap()[0];
    assert!(p.control);
    assert_eq!(p.kind, Kind::Unknown(40));
    assert_eq!(p.data, b"aa");
}

#[test]
fn reader_stays_failed_after_an_error() {
    let mut r = PacketReader::new();
    r.push(&[
        0x05, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    ]);
    let first = r.next_packet().unwrap_err();
    r.push(&packet(Id::new(1, 1), Kind::Message, b""));
    assert_eq!(r.next_packet().unwrap_err(), first);
}

#[test]
fn error_data_is_big_endian_code_then_text() {
    let data = error_data(12, "unimplemented");
    assert_eq!(&data[..8], &[0, 0, 0, 0, 0, 0, 0, 12]);
    assert_eq!(&data[8..], b"unimplemented");
    assert_eq!(parse_error_data(&data), (12, "unimplemented".into()));
}

#[test]
fn short_error_data_keeps_its_text_with_code_0() {
    assert_eq!(
        parse_error_data(b"oops"),
        (0, "oops (drpcwire note: invalid error data)".into())
    );
}
