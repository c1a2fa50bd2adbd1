//! `ServerConn` driven byte by byte (by hand and by a `DerpClient`) with fake `Instant`s.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::*;
use crate::net::derp::client_core::{ClientConfig, ClientEvent, DerpClient};
use crate::net::derp::decoder::FrameDecoder;
use crate::net::derp::frame::RawFrame;

fn server_key() -> NodePrivateKey {
    NodePrivateKey::from_bytes([0x51; 32])
}

fn client_key() -> NodePrivateKey {
    NodePrivateKey::from_bytes([0x11; 32])
}

fn encode(f: &Frame<'_>) -> Vec<u8> {
    let mut out = BytesMut::new();
    f.encode(&mut out).unwrap();
    out.to_vec()
}

fn new_server(now: Instant, jitter: Duration) -> ServerConn {
    let config = ServerConnConfig {
        keep_alive_jitter: jitter,
        ..ServerConnConfig::default()
    };
    ServerConn::new(server_key(), config, now)
}

/// Moves bytes both ways, one byte per `handle_input`, until both sides are quiet.
fn pump(c: &mut DerpClient, s: &mut ServerConn, now: Instant) -> Result<(), ServerConnError> {
    loop {
        let mut moved = false;
        while let Some(b) = s.poll_transmit() {
            for byte in b.iter() {
                c.handle_input(now, std::slice::from_ref(byte)).unwrap();
            }
            moved = true;
        }
        while let Some(b) = c.poll_transmit() {
            for byte in b.iter() {
                s.handle_input(now, std::slice::from_ref(byte))?;
            }
            moved = true;
        }
        if !moved {
            return Ok(());
        }
    }
}

/// Frames the server wrote since the last call, as the client reads them.
fn written(s: &mut ServerConn) -> Vec<RawFrame> {
    let mut d = FrameDecoder::new();
    while let Some(b) = s.poll_transmit() {
        d.push(&b);
    }
    std::iter::from_fn(|| d.next_frame(Policy::Client).unwrap()).collect()
}

fn server_events(s: &mut ServerConn) -> Vec<ServerConnEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn client_events(c: &mut DerpClient) -> Vec<ClientEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// A client and server after the handshake.
fn handshaken(now: Instant) -> (DerpClient, ServerConn) {
    let mut c = DerpClient::new(client_key(), ClientConfig::default(), now);
    let mut s = new_server(now, Duration::ZERO);
    pump(&mut c, &mut s, now).unwrap();
    let _ = server_events(&mut s);
    let _ = client_events(&mut c);
    (c, s)
}

#[test]
fn server_greets_with_its_key_at_once() {
    let mut s = new_server(Instant::now(), Duration::ZERO);
    let frames = written(&mut s);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        frames[0].parse().unwrap(),
        Frame::ServerKey {
            key: server_key().public_key()
        }
    );
}

#[test]
fn handshake_byte_by_byte_verifies_client_and_seals_server_info() {
    let now = Instant::now();
    let mut c = DerpClient::new(client_key(), ClientConfig::default(), now);
    let mut s = new_server(now, Duration::ZERO);
    pump(&mut c, &mut s, now).unwrap();
    assert_eq!(
        server_events(&mut s),
        vec![ServerConnEvent::Verified {
            key: client_key().public_key(),
            info: ClientInfo::default()
        }]
    );
    assert_eq!(s.client_key(), Some(client_key().public_key()));
    assert_eq!(
        client_events(&mut c),
        vec![
            ClientEvent::ServerKey(server_key().public_key()),
            ClientEvent::Connected {
                server_key: server_key().public_key(),
                info: ServerInfo::default()
            },
        ]
    );
}

#[test]
fn client_info_sealed_by_another_key_is_rejected_and_closes() {
    let now = Instant::now();
    let mut s = new_server(now, Duration::ZERO);
    let _ = written(&mut s);
    let claimed = client_key().public_key();
    let impostor = NodePrivateKey::from_bytes([0x66; 32]);
    let sealed = impostor.seal_to(&server_key().public_key(), &ClientInfo::default().to_json());
    let err = s
        .handle_input(
            now,
            &encode(&Frame::ClientInfo {
                key: claimed,
                sealed: &sealed,
            }),
        )
        .unwrap_err();
    assert!(matches!(err, ServerConnError::ClientInfoBox { key, .. } if key == claimed));
    assert!(err.to_string().contains("does not open"), "{err}");
    assert!(server_events(&mut s).is_empty());
    assert!(written(&mut s).is_empty(), "no server info for an impostor");
    assert!(matches!(
        s.handle_input(now, &[0]),
        Err(ServerConnError::Closed)
    ));
}

#[test]
fn client_info_that_is_not_json_is_rejected() {
    let now = Instant::now();
    let mut s = new_server(now, Duration::ZERO);
    let sealed = client_key().seal_to(&server_key().public_key(), b"not json");
    let err = s
        .handle_input(
            now,
            &encode(&Frame::ClientInfo {
                key: client_key().public_key(),
                sealed: &sealed,
            }),
        )
        .unwrap_err();
    assert!(
        matches!(err, ServerConnError::ClientInfoJson { .. }),
        "{err}"
    );
}

#[test]
fn frame_before_client_info_is_rejected() {
    let now = Instant::now();
    let mut s = new_server(now, Duration::ZERO);
    let err = s
        .handle_input(now, &encode(&Frame::NotePreferred { preferred: true }))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ServerConnError::Frame(FrameError::Unexpected { got: 0x07, .. })
        ),
        "{err}"
    );
}

#[test]
fn handshake_times_out_after_10_seconds() {
    let t0 = Instant::now();
    let mut s = new_server(t0, Duration::ZERO);
    assert_eq!(s.poll_timeout(), Some(t0 + HANDSHAKE_TIMEOUT));
    s.handle_timeout(t0 + Duration::from_millis(9_999)).unwrap();
    let err = s.handle_timeout(t0 + HANDSHAKE_TIMEOUT).unwrap_err();
    assert!(matches!(err, ServerConnError::HandshakeTimeout));
}

#[test]
fn send_packet_becomes_an_event_and_queued_packets_reach_the_client() {
    let now = Instant::now();
    let (mut c, mut s) = handshaken(now);
    let dst = NodePublicKey::from_bytes([7; 32]);
    c.send_packet(dst, b"to seven").unwrap();
    pump(&mut c, &mut s, now).unwrap();
    assert_eq!(
        server_events(&mut s),
        vec![ServerConnEvent::SendPacket {
            dst,
            packet: bytes::Bytes::from_static(b"to seven")
        }]
    );
    s.queue_packet(&dst, b"from seven").unwrap();
    pump(&mut c, &mut s, now).unwrap();
    assert_eq!(
        client_events(&mut c),
        vec![ClientEvent::Packet {
            from: dst,
            data: bytes::Bytes::from_static(b"from seven")
        }]
    );
}

#[test]
fn client_ping_is_answered_with_pong() {
    let now = Instant::now();
    let (mut c, mut s) = handshaken(now);
    c.send_ping(*b"are u up").unwrap();
    pump(&mut c, &mut s, now).unwrap();
    assert_eq!(
        client_events(&mut c),
        vec![ClientEvent::Pong { data: *b"are u up" }]
    );
}

#[test]
fn keep_alive_every_60_seconds_plus_jitter() {
    let t0 = Instant::now();
    let mut c = DerpClient::new(client_key(), ClientConfig::default(), t0);
    let mut s = new_server(t0, Duration::from_millis(3_000));
    pump(&mut c, &mut s, t0).unwrap();
    let period = Duration::from_secs(63);
    assert_eq!(s.poll_timeout(), Some(t0 + period));
    s.handle_timeout(t0 + period - Duration::from_millis(1))
        .unwrap();
    assert!(written(&mut s).is_empty());
    s.handle_timeout(t0 + period).unwrap();
    let frames = written(&mut s);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].parse().unwrap(), Frame::KeepAlive);
    assert_eq!(s.poll_timeout(), Some(t0 + 2 * period));
}

#[test]
fn note_preferred_is_recorded() {
    let now = Instant::now();
    let (mut c, mut s) = handshaken(now);
    assert!(!s.is_preferred());
    c.note_preferred(true).unwrap();
    pump(&mut c, &mut s, now).unwrap();
    assert!(s.is_preferred());
    assert_eq!(
        server_events(&mut s),
        vec![ServerConnEvent::NotePreferred { preferred: true }]
    );
}

#[test]
fn mesh_frames_without_mesh_key_close_the_connection() {
    let now = Instant::now();
    for f in [
        Frame::WatchConns,
        Frame::ClosePeer {
            key: NodePublicKey::from_bytes([1; 32]),
        },
        Frame::ForwardPacket {
            src: NodePublicKey::from_bytes([1; 32]),
            dst: NodePublicKey::from_bytes([2; 32]),
            packet: b"x",
        },
    ] {
        let (_c, mut s) = handshaken(now);
        let err = s.handle_input(now, &encode(&f)).unwrap_err();
        assert!(matches!(err, ServerConnError::MeshOnly { .. }), "{err}");
        assert!(err.to_string().contains("insufficient permissions"));
    }
}

#[test]
fn server_to_client_frame_types_from_a_client_are_skipped() {
    let now = Instant::now();
    let (_c, mut s) = handshaken(now);
    let mut input = encode(&Frame::KeepAlive);
    input.extend(encode(&Frame::Health {
        problem: "x".into(),
    }));
    input.extend(encode(&Frame::Unknown {
        typ: 0x99,
        payload: &[0; 5000],
    }));
    input.extend(encode(&Frame::NotePreferred { preferred: true }));
    s.handle_input(now, &input).unwrap();
    assert_eq!(
        server_events(&mut s),
        vec![ServerConnEvent::NotePreferred { preferred: true }]
    );
}

#[test]
fn send_packet_over_64_kib_closes_the_connection() {
    let now = Instant::now();
    let (_c, mut s) = handshaken(now);
    let mut hdr = vec![0x04];
    hdr.extend_from_slice(&(32u32 + 65_537).to_be_bytes());
    assert!(matches!(
        s.handle_input(now, &hdr),
        Err(ServerConnError::Frame(FrameError::TooLong { .. }))
    ));
}

fn disco_packet() -> Vec<u8> {
    let mut p = b"TS\xf0\x9f\x92\xac".to_vec();
    p.resize(6 + 32 + 24 + 10, 0xab);
    p
}

#[test]
fn unknown_destination_gets_peer_gone_not_here_for_disco_only() {
    let t0 = Instant::now();
    let (mut c, mut s) = handshaken(t0);
    let dst = NodePublicKey::from_bytes([9; 32]);
    assert!(!s.note_unknown_destination(t0, dst, b"wireguard bytes"));
    assert!(s.note_unknown_destination(t0, dst, &disco_packet()));
    pump(&mut c, &mut s, t0).unwrap();
    assert_eq!(
        client_events(&mut c),
        vec![ClientEvent::PeerGone {
            key: dst,
            reason: PeerGoneReason::NotHere
        }]
    );
}

#[test]
fn peer_gone_not_here_is_limited_to_3_then_1_per_second() {
    let t0 = Instant::now();
    let (_c, mut s) = handshaken(t0);
    let dst = NodePublicKey::from_bytes([9; 32]);
    let p = disco_packet();
    let sent: Vec<bool> = (0..5)
        .map(|_| s.note_unknown_destination(t0, dst, &p))
        .collect();
    assert_eq!(sent, vec![true, true, true, false, false]);
    let t1 = t0 + Duration::from_millis(1_000);
    assert!(s.note_unknown_destination(t1, dst, &p));
    assert!(!s.note_unknown_destination(t1, dst, &p));
}

#[test]
fn health_and_restarting_reach_the_client() {
    let now = Instant::now();
    let (mut c, mut s) = handshaken(now);
    s.queue_health("duplicate").unwrap();
    s.queue_restarting(Duration::from_millis(250), Duration::from_secs(3));
    pump(&mut c, &mut s, now).unwrap();
    assert_eq!(
        client_events(&mut c),
        vec![
            ClientEvent::Health {
                problem: Some("duplicate".into())
            },
            ClientEvent::Restarting {
                reconnect_in: Duration::from_millis(250),
                try_for: Duration::from_secs(3)
            },
        ]
    );
}
