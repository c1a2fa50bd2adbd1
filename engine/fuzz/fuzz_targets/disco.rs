//! Fuzzes the disco codec: the input as a whole packet (`open`) and as the plaintext of a box
//! that opened (`decode_message`).
//!
//! Checks: no panic; `open` says `NotDisco` exactly when `looks_like_disco` is false; every
//! message that decodes re-encodes to bytes that decode to the same message, and sealed by a
//! peer it opens to the same sender and message.

#![no_main]

use std::sync::OnceLock;

use codervpn_engine::net::disco::codec::{
    self, DiscoError, DiscoPrivateKey, DiscoPublicKey, Message,
};
use libfuzzer_sys::fuzz_target;

struct Keys {
    me: DiscoPrivateKey,
    peer: DiscoPrivateKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        me: DiscoPrivateKey::from_bytes([0x22; 32]),
        peer: DiscoPrivateKey::from_bytes([0x11; 32]),
    })
}

fuzz_target!(|data: &[u8]| {
    let k = keys();
    let looks = codec::looks_like_disco(data);
    match codec::open(&k.me, data) {
        Err(DiscoError::NotDisco { len }) => {
            assert!(!looks);
            assert_eq!(len, data.len());
        }
        Err(_) => assert!(looks),
        Ok((sender, msg)) => {
            assert!(looks);
            assert_eq!(codec::sender(data), Some(sender));
            round_trip(sender, &msg);
        }
    }
    let sender = k.peer.public_key();
    if let Ok(msg) = codec::decode_message(sender, data) {
        round_trip(sender, &msg);
        let sealed = codec::seal_with_nonce(&k.peer, &k.me.public_key(), &msg, [9; 24]);
        assert_eq!(codec::open(&k.me, &sealed), Ok((sender, msg)));
    }
});

fn round_trip(sender: DiscoPublicKey, msg: &Message) {
    let encoded = codec::encode_message(msg);
    assert_eq!(codec::decode_message(sender, &encoded).as_ref(), Ok(msg));
}
