//! Writes the seed corpora `seeds/disco/` and `seeds/stun/` (run from `engine/fuzz`:
//! `cargo run --example gen_disco_stun_seeds`). Keys match the `disco` target's.

use std::net::SocketAddr;
use std::path::Path;

use codervpn_engine::net::derp::keys::NodePublicKey;
use codervpn_engine::net::disco::codec::{self, CallMeMaybe, DiscoPrivateKey, Message, Ping, Pong};
use codervpn_engine::net::stun;

fn main() -> std::io::Result<()> {
    let me = DiscoPrivateKey::from_bytes([0x22; 32]);
    let peer = DiscoPrivateKey::from_bytes([0x11; 32]);
    let v4: SocketAddr = "192.0.2.1:41641".parse().map_err(std::io::Error::other)?;
    let v6: SocketAddr = "[2001:db8::1]:3478".parse().map_err(std::io::Error::other)?;
    let msgs = [
        ("ping", Message::Ping(Ping { tx_id: [1; 12], node_key: Some(NodePublicKey::from_bytes([3; 32])) })),
        ("pong_v4", Message::Pong(Pong { tx_id: [2; 12], src: v4 })),
        ("pong_v6", Message::Pong(Pong { tx_id: [2; 12], src: v6 })),
        ("call_me_maybe", Message::CallMeMaybe(CallMeMaybe { endpoints: vec![v4, v6] })),
    ];
    let disco = Path::new("seeds/disco");
    std::fs::create_dir_all(disco)?;
    for (name, msg) in &msgs {
        let sealed = codec::seal_with_nonce(&peer, &me.public_key(), msg, [5; 24]);
        std::fs::write(disco.join(format!("sealed_{name}")), sealed)?;
        std::fs::write(disco.join(format!("plain_{name}")), codec::encode_message(msg))?;
    }
    let dir = Path::new("seeds/stun");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("request"), stun::binding_request([7; 12]))?;
    std::fs::write(dir.join("response_v4"), stun::binding_response([8; 12], v4))?;
    std::fs::write(dir.join("response_v6"), stun::binding_response([8; 12], v6))?;
    Ok(())
}
