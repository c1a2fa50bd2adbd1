//! Disco codec: layout, padding, lax parsing and typed errors (tailnet.md §13.4).

use std::net::SocketAddr;

use super::codec::*;
use crate::net::derp::keys::NodePublicKey;

fn keys() -> (DiscoPrivateKey, DiscoPrivateKey) {
    (
        DiscoPrivateKey::from_bytes([1; 32]),
        DiscoPrivateKey::from_bytes([2; 32]),
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ping() -> Message {
    Message::Ping(Ping {
        tx_id: [7; 12],
        node_key: Some(NodePublicKey::from_bytes([9; 32])),
    })
}

#[test]
fn magic_is_ts_speech_bubble() {
    assert_eq!(MAGIC, [0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac]);
    assert_eq!(&MAGIC, "TS💬".as_bytes());
}

#[test]
fn padded_ping_and_pong_are_1310_bytes() {
    // disco.go: paddedPayloadLen = 1310 - len(Magic) - keyLen - NonceLen - box.Overhead - 2
    assert_eq!(PADDED_BODY_LEN, 1230);
    let (a, b) = keys();
    let pong = Message::Pong(Pong {
        tx_id: [1; 12],
        src: addr("1.2.3.4:5"),
    });
    assert_eq!(seal(&a, &b.public_key(), &ping()).len(), 1310);
    assert_eq!(seal(&a, &b.public_key(), &pong).len(), 1310);
}

#[test]
fn ping_plaintext_layout_is_type_version_txid_nodekey_zero_padding() {
    let pt = encode_message(&ping());
    assert_eq!(pt.len(), 2 + 1230);
    assert_eq!(&pt[..2], &[0x01, 0x01]);
    assert_eq!(&pt[2..14], &[7; 12]);
    assert_eq!(&pt[14..46], &[9; 32]);
    assert!(pt[46..].iter().all(|&b| b == 0));
}

#[test]
fn pong_plaintext_layout_maps_ipv4_and_puts_port_big_endian() {
    let pt = encode_message(&Message::Pong(Pong {
        tx_id: [3; 12],
        src: addr("192.0.2.1:4660"),
    }));
    assert_eq!(&pt[..2], &[0x02, 0x01]);
    assert_eq!(&pt[2..14], &[3; 12]);
    assert_eq!(
        &pt[14..32],
        &[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1, 0x12, 0x34
        ]
    );
    assert!(pt[32..].iter().all(|&b| b == 0));
}

#[test]
fn call_me_maybe_is_v0_and_unpadded() {
    let pt = encode_message(&Message::CallMeMaybe(CallMeMaybe {
        endpoints: vec![addr("10.0.0.1:41641"), addr("[2001:db8::1]:7")],
    }));
    assert_eq!(&pt[..2], &[0x03, 0x00]);
    assert_eq!(pt.len(), 2 + 2 * 18);
}

#[test]
fn every_message_round_trips_through_seal_and_open() {
    let (a, b) = keys();
    let msgs = [
        ping(),
        Message::Ping(Ping {
            tx_id: [0xaa; 12],
            node_key: None,
        }),
        Message::Pong(Pong {
            tx_id: [1; 12],
            src: addr("[2001:db8::5]:41641"),
        }),
        Message::CallMeMaybe(CallMeMaybe {
            endpoints: vec![addr("203.0.113.9:1"), addr("[::1]:65535")],
        }),
        Message::CallMeMaybe(CallMeMaybe::default()),
    ];
    for msg in msgs {
        let packet = seal(&a, &b.public_key(), &msg);
        assert!(looks_like_disco(&packet));
        assert_eq!(sender(&packet), Some(a.public_key()));
        let (from, got) = open(&b, &packet).unwrap_or_else(|e| panic!("{msg:?}: {e}"));
        assert_eq!(from, a.public_key());
        assert_eq!(got, msg);
    }
}

#[test]
fn header_carries_sender_key_and_nonce() {
    let (a, b) = keys();
    let packet = seal_with_nonce(&a, &b.public_key(), &ping(), [5; 24]);
    assert_eq!(&packet[..6], &MAGIC);
    assert_eq!(&packet[6..38], a.public_key().as_bytes());
    assert_eq!(&packet[38..62], &[5; 24]);
}

#[test]
fn short_or_unmagical_packets_are_not_disco() {
    let (a, b) = keys();
    let packet = seal(&a, &b.public_key(), &ping());
    assert!(!looks_like_disco(&packet[..61]));
    assert!(looks_like_disco(&packet[..62]));
    let mut wrong = packet.clone();
    wrong[0] = b'X';
    assert!(!looks_like_disco(&wrong));
    assert_eq!(open(&b, &wrong), Err(DiscoError::NotDisco { len: 1310 }));
    assert_eq!(open(&b, &[]), Err(DiscoError::NotDisco { len: 0 }));
}

#[test]
fn header_without_tag_is_truncated() {
    let (a, b) = keys();
    let packet = seal(&a, &b.public_key(), &ping());
    let err = open(&b, &packet[..62 + 15]);
    assert_eq!(
        err,
        Err(DiscoError::Truncated {
            sender: a.public_key(),
            len: 77
        })
    );
}

#[test]
fn box_for_another_key_does_not_open() {
    let (a, b) = keys();
    let c = DiscoPrivateKey::from_bytes([3; 32]);
    let packet = seal(&a, &b.public_key(), &ping());
    assert_eq!(
        open(&c, &packet),
        Err(DiscoError::BadBox {
            sender: a.public_key()
        })
    );
}

#[test]
fn flipped_ciphertext_byte_or_forged_sender_does_not_open() {
    let (a, b) = keys();
    let packet = seal(&a, &b.public_key(), &ping());
    let mut flipped = packet.clone();
    flipped[100] ^= 1;
    assert!(matches!(open(&b, &flipped), Err(DiscoError::BadBox { .. })));
    // A forger who swaps in another sender key cannot produce a box that opens.
    let mut forged = packet.clone();
    forged[6..38].copy_from_slice(DiscoPrivateKey::from_bytes([4; 32]).public_key().as_bytes());
    assert!(matches!(open(&b, &forged), Err(DiscoError::BadBox { .. })));
    // A truncated box loses its tag's coverage.
    assert!(matches!(
        open(&b, &packet[..packet.len() - 1]),
        Err(DiscoError::BadBox { .. })
    ));
}

#[test]
fn unknown_type_and_empty_plaintext_are_errors() {
    let s = DiscoPublicKey::from_bytes([0; 32]);
    assert_eq!(
        decode_message(s, &[0x04, 0]),
        Err(DiscoError::UnknownType { sender: s, ty: 4 })
    );
    assert_eq!(
        decode_message(s, &[0x01]),
        Err(DiscoError::EmptyMessage { sender: s })
    );
}

#[test]
fn ping_needs_only_the_tx_id_and_reads_the_key_when_present() {
    // disco.go parsePing: lax on length; old clients sent no node key.
    let s = DiscoPublicKey::from_bytes([0; 32]);
    let mut pt = vec![0x01, 0x00];
    pt.extend_from_slice(&[8; 12]);
    assert_eq!(
        decode_message(s, &pt),
        Ok(Message::Ping(Ping {
            tx_id: [8; 12],
            node_key: None
        }))
    );
    pt.extend_from_slice(&[6; 31]);
    assert!(matches!(
        decode_message(s, &pt),
        Ok(Message::Ping(Ping { node_key: None, .. }))
    ));
    pt.push(6);
    assert!(matches!(
        decode_message(s, &pt),
        Ok(Message::Ping(Ping {
            node_key: Some(_),
            ..
        }))
    ));
    assert!(matches!(
        decode_message(s, &pt[..13]),
        Err(DiscoError::ShortBody { kind: "ping", .. })
    ));
}

#[test]
fn pong_needs_30_body_bytes() {
    let s = DiscoPublicKey::from_bytes([0; 32]);
    let mut pt = vec![0x02, 0x00];
    pt.extend_from_slice(&[1; 29]);
    assert!(matches!(
        decode_message(s, &pt),
        Err(DiscoError::ShortBody {
            kind: "pong",
            len: 29,
            need: 30,
            ..
        })
    ));
    pt.push(1);
    assert!(matches!(decode_message(s, &pt), Ok(Message::Pong(_))));
}

#[test]
fn call_me_maybe_with_odd_length_or_other_version_carries_no_endpoints() {
    // disco.go parseCallMeMaybe: len%18 != 0 || ver != 0 || len == 0 -> empty.
    let s = DiscoPublicKey::from_bytes([0; 32]);
    let ep = endpoint_bytes(addr("10.1.2.3:4"));
    let mut odd = vec![0x03, 0x00];
    odd.extend_from_slice(&ep);
    odd.push(0);
    let mut v1 = vec![0x03, 0x01];
    v1.extend_from_slice(&ep);
    for pt in [odd, v1] {
        assert_eq!(
            decode_message(s, &pt),
            Ok(Message::CallMeMaybe(CallMeMaybe::default()))
        );
    }
}

#[test]
fn ipv4_mapped_endpoints_are_unmapped() {
    let mut b = [0u8; 18];
    b[10] = 0xff;
    b[11] = 0xff;
    b[12..16].copy_from_slice(&[198, 51, 100, 7]);
    b[16..].copy_from_slice(&443u16.to_be_bytes());
    assert_eq!(endpoint_from_bytes(&b), addr("198.51.100.7:443"));
}
