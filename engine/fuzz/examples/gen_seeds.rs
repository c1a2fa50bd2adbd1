//! Writes the seed corpus `seeds/derp_frames/` (run from `engine/fuzz`:
//! `cargo run --example gen_seeds`). Each seed is `[schedule] [mode] ++ stream`.

use std::time::Duration;

use bytes::BytesMut;
use codervpn_engine::net::derp::frame::{Frame, PeerGoneReason};
use codervpn_engine::net::derp::keys::{ClientInfo, NodePrivateKey, NodePublicKey, ServerInfo};

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new("seeds/derp_frames");
    std::fs::create_dir_all(dir)?;
    let k = |b: u8| NodePublicKey::from_bytes([b; 32]);
    let client = NodePrivateKey::from_bytes([0x11; 32]);
    let server = NodePrivateKey::from_bytes([0x51; 32]);
    let sealed = client.seal_to_with_nonce(&server.public_key(), &ClientInfo::default().to_json(), [3; 24]);
    let server_info = server.seal_to_with_nonce(&client.public_key(), &ServerInfo::default().to_json(), [4; 24]);
    let mut disco = b"TS\xf0\x9f\x92\xac".to_vec();
    disco.resize(80, 7);
    let server_to_client = vec![
        Frame::ServerKey { key: server.public_key() },
        Frame::ServerInfo { sealed: &server_info },
        Frame::RecvPacket { src: k(2), packet: b"hello" },
        Frame::KeepAlive,
        Frame::PeerGone { key: k(3), reason: PeerGoneReason::NotHere },
        Frame::PeerPresent { key: k(4) },
        Frame::Ping { data: *b"12345678" },
        Frame::Pong { data: *b"87654321" },
        Frame::Health { problem: "duplicate".into() },
        Frame::Restarting { reconnect_in: Duration::from_millis(100), try_for: Duration::from_secs(2) },
        Frame::Unknown { typ: 0x7f, payload: b"future" },
    ];
    let client_to_server = vec![
        Frame::SendPacket { dst: k(5), packet: b"world" },
        Frame::SendPacket { dst: k(6), packet: &disco },
        Frame::NotePreferred { preferred: true },
        Frame::Ping { data: *b"abcdefgh" },
        Frame::KeepAlive,
        Frame::ForwardPacket { src: k(6), dst: k(7), packet: b"fwd" },
        Frame::WatchConns,
        Frame::ClosePeer { key: k(8) },
    ];
    let encode = |frames: &[Frame<'_>]| {
        let mut out = BytesMut::new();
        for f in frames {
            f.encode(&mut out).unwrap();
        }
        out.to_vec()
    };
    let write = |name: &str, schedule: u8, mode: u8, stream: &[u8]| {
        let mut seed = vec![schedule, mode];
        seed.extend_from_slice(stream);
        std::fs::write(dir.join(name), seed)
    };
    let s2c = encode(&server_to_client);
    let c2s = encode(&client_to_server);
    write("decoder_s2c", 0x07, 0, &s2c)?;
    write("decoder_c2s", 0x03, 0, &c2s)?;
    write("client_running", 0x05, 1 | (1 << 3), &s2c[..])?;
    write("client_greeting", 0x02, 1 | 4, &s2c)?;
    write("server_running", 0x04, 2 | (2 << 3), &c2s)?;
    let mut hello = BytesMut::new();
    Frame::ClientInfo { key: client.public_key(), sealed: &sealed }.encode(&mut hello).unwrap();
    hello.extend_from_slice(&c2s);
    write("server_handshake", 0x06, 2 | 4, &hello)?;
    write("both_running", 0x01, 3, &[s2c.clone(), c2s.clone()].concat())?;
    println!("wrote seeds to {}", dir.display());
    Ok(())
}
