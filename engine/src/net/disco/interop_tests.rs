//! Interop with tailscale-rs's `ts_disco_protocol` (an implementation we did not write), with
//! fixed keys and nonces.
//!
//! tailscale-rs speaks upstream Tailscale's v0 ping and pong (unpadded) and its decryption
//! rejects any other version (`Error::UnknownVersion`, after the box has opened in place).
//! Coder's fork sends v1 padded pings and pongs, so for those the test checks that their box
//! opens ours (the error is the version, not `CryptoFailed`) and reads the decrypted body with
//! their message types.

use std::net::SocketAddr;

use ts_disco_protocol as ts;
use zerocopy::FromBytes;

use super::codec::{self, *};
use crate::net::derp::keys::NodePublicKey;

const OUR_KEY: [u8; 32] = [0x11; 32];
const THEIR_KEY: [u8; 32] = [0x22; 32];
const NONCE: [u8; 24] = [0x33; 24];
/// Magic, sender key, nonce, tag: where the plaintext starts in a packet.
const PLAINTEXT_AT: usize = codec::HEADER_LEN + codec::TAG_LEN;

fn ours() -> DiscoPrivateKey {
    DiscoPrivateKey::from_bytes(OUR_KEY)
}

fn theirs() -> ts_keys::DiscoPrivateKey {
    format!("privkey:{}", hex::encode(THEIR_KEY))
        .parse()
        .unwrap_or_else(|e| panic!("ts_keys private key: {e:?}"))
}

fn their_public() -> DiscoPublicKey {
    DiscoPrivateKey::from_bytes(THEIR_KEY).public_key()
}

fn ts_public(k: DiscoPublicKey) -> ts_keys::DiscoPublicKey {
    ts_keys::DiscoPublicKey::from_bytes(*k.as_bytes())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Seals a message with tailscale-rs: `init` fills the plaintext message.
fn ts_seal<M>(size: usize, init: impl FnOnce(&mut M)) -> Vec<u8>
where
    M: ?Sized
        + ts::Message
        + zerocopy::Immutable
        + zerocopy::TryFromBytes
        + zerocopy::IntoBytes
        + zerocopy::KnownLayout,
{
    let mut buf = ts::Packet::vec_for_message(size);
    let pkt =
        ts::Packet::init_from_bytes::<M>(&mut buf, init).unwrap_or_else(|e| panic!("ts init: {e}"));
    pkt.encrypt_in_place(&theirs(), &ts_public(ours().public_key()), NONCE)
        .unwrap_or_else(|e| panic!("ts encrypt: {e}"));
    buf
}

/// Opens our packet with tailscale-rs; returns the decrypted plaintext (type, version, body)
/// and the result of their decryption (which includes their version check).
fn ts_open(mut packet: Vec<u8>) -> (Vec<u8>, Result<(), ts::Error>) {
    let result = ts::Packet::from_encrypted_bytes_mut(&mut packet)
        .and_then(|p| p.decrypt_in_place(&theirs()).map(|_| ()));
    (packet[PLAINTEXT_AT..].to_vec(), result)
}

#[test]
fn their_ping_opens_with_ours() {
    let node_key = [0x44; 32];
    let packet = ts_seal::<ts::Ping>(ts::Ping::size_with_padding(0), |p| {
        p.tx_id = [0x55; 12];
        p.node_key = ts_keys::NodePublicKey::from_bytes(node_key);
    });
    assert!(looks_like_disco(&packet));
    let (from, msg) = open(&ours(), &packet).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from, their_public());
    assert_eq!(
        msg,
        Message::Ping(Ping {
            tx_id: [0x55; 12],
            node_key: Some(NodePublicKey::from_bytes(node_key)),
        })
    );
}

#[test]
fn their_pong_opens_with_ours() {
    for src in ["203.0.113.7:41641", "[2001:db8::7]:1"] {
        let packet = ts_seal::<ts::Pong>(ts::Pong::size(), |p| {
            p.tx_id = [0x66; 12];
            p.src = addr(src).into();
        });
        let (_, msg) = open(&ours(), &packet).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            msg,
            Message::Pong(Pong {
                tx_id: [0x66; 12],
                src: addr(src),
            })
        );
    }
}

#[test]
fn their_call_me_maybe_opens_with_ours() {
    let eps = [addr("198.51.100.1:41641"), addr("[2001:db8::9]:7")];
    let packet = ts_seal::<ts::CallMeMaybe>(ts::CallMeMaybe::size_for_endpoint_count(2), |c| {
        c.endpoints[0] = eps[0].into();
        c.endpoints[1] = eps[1].into();
    });
    let (_, msg) = open(&ours(), &packet).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        msg,
        Message::CallMeMaybe(CallMeMaybe {
            endpoints: eps.to_vec()
        })
    );
}

#[test]
fn our_call_me_maybe_is_byte_identical_to_theirs_and_opens_with_theirs() {
    let eps = [addr("198.51.100.1:41641"), addr("[2001:db8::9]:7")];
    let msg = Message::CallMeMaybe(CallMeMaybe {
        endpoints: eps.to_vec(),
    });
    // Same keys, same nonce, from their side to ours and from ours to theirs: the plaintext
    // and layout match, so compare what each side's box opens to.
    let our_packet = seal_with_nonce(&ours(), &their_public(), &msg, NONCE);
    let (plaintext, result) = ts_open(our_packet.clone());
    assert_eq!(result, Ok(()));
    assert_eq!(plaintext, encode_message(&msg));
    let mut p = our_packet;
    let decrypted = ts::Packet::from_encrypted_bytes_mut(&mut p)
        .and_then(|p| p.decrypt_in_place(&theirs()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decrypted.sender_pubkey(), &ts_public(ours().public_key()));
    let cmm = decrypted
        .as_msg::<ts::CallMeMaybe>()
        .unwrap_or_else(|| panic!("not a call-me-maybe"));
    let got: Vec<SocketAddr> = cmm.endpoints.iter().map(|e| e.socket_addr()).collect();
    assert_eq!(got, eps);

    // Byte-identical: their packet from THEIR_KEY to OUR_KEY equals ours sealed the same way.
    let theirs_packet =
        ts_seal::<ts::CallMeMaybe>(ts::CallMeMaybe::size_for_endpoint_count(2), |c| {
            c.endpoints[0] = eps[0].into();
            c.endpoints[1] = eps[1].into();
        });
    let mirrored = seal_with_nonce(
        &DiscoPrivateKey::from_bytes(THEIR_KEY),
        &ours().public_key(),
        &msg,
        NONCE,
    );
    assert_eq!(mirrored, theirs_packet);
}

#[test]
fn our_padded_ping_opens_with_theirs_and_their_types_read_it() {
    let msg = Message::Ping(Ping {
        tx_id: [0x77; 12],
        node_key: Some(NodePublicKey::from_bytes([0x88; 32])),
    });
    let (plaintext, result) = ts_open(seal_with_nonce(&ours(), &their_public(), &msg, NONCE));
    // The box opened (not CryptoFailed); tailscale-rs knows only v0 and says so.
    assert_eq!(result, Err(ts::Error::UnknownVersion));
    assert_eq!(plaintext[..2], [0x01, 0x01]);
    let ping = ts::Ping::ref_from_bytes(&plaintext[2..]).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(ping.tx_id, [0x77; 12]);
    assert_eq!(
        ping.node_key,
        ts_keys::NodePublicKey::from_bytes([0x88; 32])
    );
    assert_eq!(ping.padding.len(), 1230 - 44);
    assert!(ping.padding.iter().all(|&b| b == 0));
}

#[test]
fn our_padded_pong_opens_with_theirs_and_their_types_read_it() {
    let msg = Message::Pong(Pong {
        tx_id: [0x99; 12],
        src: addr("192.0.2.44:3478"),
    });
    let (plaintext, result) = ts_open(seal_with_nonce(&ours(), &their_public(), &msg, NONCE));
    assert_eq!(result, Err(ts::Error::UnknownVersion));
    assert_eq!(plaintext[..2], [0x02, 0x01]);
    let (pong, _padding) =
        ts::Pong::ref_from_prefix(&plaintext[2..]).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(pong.tx_id, [0x99; 12]);
    assert_eq!(pong.src.socket_addr(), addr("192.0.2.44:3478"));
}

#[test]
fn their_wrong_key_box_is_bad_box_for_us() {
    let packet = ts_seal::<ts::Pong>(ts::Pong::size(), |p| {
        p.tx_id = [1; 12];
        p.src = addr("192.0.2.1:1").into();
    });
    let stranger = DiscoPrivateKey::from_bytes([0x12; 32]);
    assert_eq!(
        open(&stranger, &packet),
        Err(DiscoError::BadBox {
            sender: their_public()
        })
    );
}

#[test]
fn both_sides_agree_on_what_looks_like_disco() {
    let packet = seal_with_nonce(
        &ours(),
        &their_public(),
        &Message::CallMeMaybe(CallMeMaybe::default()),
        NONCE,
    );
    for len in [0, 5, 6, 61, 62, packet.len()] {
        let p = &packet[..len];
        assert_eq!(looks_like_disco(p), ts::is_disco_message(p), "len {len}");
    }
}
