//! `DerpClient` driven byte by byte by a scripted server, with fake `Instant`s.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::*;
use crate::net::derp::decoder::{FrameDecoder, Policy};
use crate::net::derp::frame::{Frame, RawFrame};

struct Server {
    key: NodePrivateKey,
}

impl Server {
    fn new() -> Self {
        Self {
            key: NodePrivateKey::from_bytes([0x51; 32]),
        }
    }

    fn greeting(&self) -> Vec<u8> {
        encode(&Frame::ServerKey {
            key: self.key.public_key(),
        })
    }

    fn server_info(&self, client: &NodePublicKey) -> Vec<u8> {
        let sealed = self.key.seal_to(client, &ServerInfo::default().to_json());
        encode(&Frame::ServerInfo { sealed: &sealed })
    }
}

fn encode(f: &Frame<'_>) -> Vec<u8> {
    let mut out = BytesMut::new();
    f.encode(&mut out).unwrap();
    out.to_vec()
}

fn client_key() -> NodePrivateKey {
    NodePrivateKey::from_bytes([0x11; 32])
}

fn new_client(now: Instant) -> DerpClient {
    DerpClient::new(client_key(), ClientConfig::default(), now)
}

/// Feeds `bytes` one at a time.
fn feed(c: &mut DerpClient, now: Instant, bytes: &[u8]) -> Result<(), DerpClientError> {
    for b in bytes {
        c.handle_input(now, std::slice::from_ref(b))?;
    }
    Ok(())
}

/// Frames the client wrote since the last call (server-side view).
fn written(c: &mut DerpClient, policy: Policy) -> Vec<RawFrame> {
    let mut d = FrameDecoder::new();
    while let Some(b) = c.poll_transmit() {
        d.push(&b);
    }
    let mut frames = Vec::new();
    let mut policy = policy;
    while let Some(f) = d.next_frame(policy).unwrap() {
        policy = Policy::ServerRunning;
        frames.push(f);
    }
    frames
}

fn events(c: &mut DerpClient) -> Vec<ClientEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// A client that has completed the handshake; returns it with the server.
fn connected(now: Instant) -> (DerpClient, Server) {
    let server = Server::new();
    let mut c = new_client(now);
    feed(&mut c, now, &server.greeting()).unwrap();
    let info = server.server_info(&c.public_key());
    feed(&mut c, now, &info).unwrap();
    let _ = written(&mut c, Policy::ServerHandshake);
    let _ = events(&mut c);
    (c, server)
}

#[test]
fn handshake_answers_server_key_with_sealed_client_info() {
    let now = Instant::now();
    let server = Server::new();
    let mut c = new_client(now);
    assert!(
        c.poll_transmit().is_none(),
        "nothing is written before the greeting"
    );
    feed(&mut c, now, &server.greeting()).unwrap();
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::ServerKey(server.key.public_key())]
    );
    let frames = written(&mut c, Policy::ServerHandshake);
    assert_eq!(frames.len(), 1);
    let Frame::ClientInfo { key, sealed } = frames[0].parse().unwrap() else {
        panic!("not client info")
    };
    assert_eq!(key, client_key().public_key());
    let json = server.key.open_from(&key, sealed).unwrap();
    assert_eq!(json, br#"{"version":2,"CanAckPings":true}"#);
    feed(&mut c, now, &server.server_info(&key)).unwrap();
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::Connected {
            server_key: server.key.public_key(),
            info: ServerInfo::default()
        }]
    );
    assert!(c.is_connected());
}

#[test]
fn first_frame_other_than_server_key_is_refused() {
    let now = Instant::now();
    let mut c = new_client(now);
    let err = feed(&mut c, now, &encode(&Frame::KeepAlive)).unwrap_err();
    assert!(
        matches!(err, DerpClientError::Greeting(ref m) if m.contains("0x06")),
        "{err}"
    );
    assert!(matches!(
        c.handle_input(now, &[]),
        Err(DerpClientError::Closed)
    ));
}

#[test]
fn server_key_greeting_over_1_kib_is_refused() {
    let now = Instant::now();
    let mut c = new_client(now);
    let mut payload = frame::MAGIC.to_vec();
    payload.resize(1025, 0);
    let err = feed(
        &mut c,
        now,
        &encode(&Frame::Unknown {
            typ: 0x01,
            payload: &payload,
        }),
    )
    .unwrap_err();
    assert!(matches!(err, DerpClientError::Greeting(_)), "{err}");
}

#[test]
fn server_key_other_than_derp_public_key_header_is_refused() {
    let now = Instant::now();
    let server = Server::new();
    let config = ClientConfig {
        expected_server_key: Some(NodePublicKey::from_bytes([1; 32])),
        ..ClientConfig::default()
    };
    let mut c = DerpClient::new(client_key(), config, now);
    let err = feed(&mut c, now, &server.greeting()).unwrap_err();
    assert!(
        matches!(err, DerpClientError::ServerKeyMismatch { .. }),
        "{err}"
    );
}

#[test]
fn server_info_sealed_by_another_key_is_refused() {
    let now = Instant::now();
    let server = Server::new();
    let mut c = new_client(now);
    feed(&mut c, now, &server.greeting()).unwrap();
    let impostor = NodePrivateKey::from_bytes([0x66; 32]);
    let sealed = impostor.seal_to(&c.public_key(), b"{\"version\":2}");
    let err = feed(&mut c, now, &encode(&Frame::ServerInfo { sealed: &sealed })).unwrap_err();
    assert!(
        matches!(err, DerpClientError::ServerInfoBox { .. }),
        "{err}"
    );
}

#[test]
fn packets_sent_before_the_greeting_follow_the_client_info() {
    let now = Instant::now();
    let server = Server::new();
    let mut c = new_client(now);
    let peer = NodePublicKey::from_bytes([2; 32]);
    c.send_packet(peer, b"early").unwrap();
    c.note_preferred(true).unwrap();
    assert!(c.poll_transmit().is_none());
    feed(&mut c, now, &server.greeting()).unwrap();
    let frames = written(&mut c, Policy::ServerHandshake);
    assert_eq!(frames.len(), 3);
    assert_eq!(
        frames[1].parse().unwrap(),
        Frame::SendPacket {
            dst: peer,
            packet: b"early"
        }
    );
    assert_eq!(
        frames[2].parse().unwrap(),
        Frame::NotePreferred { preferred: true }
    );
}

#[test]
fn recv_packet_becomes_a_packet_event() {
    let now = Instant::now();
    let (mut c, _server) = connected(now);
    let src = NodePublicKey::from_bytes([3; 32]);
    feed(
        &mut c,
        now,
        &encode(&Frame::RecvPacket {
            src,
            packet: b"data",
        }),
    )
    .unwrap();
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::Packet {
            from: src,
            data: bytes::Bytes::from_static(b"data")
        }]
    );
}

#[test]
fn send_packet_writes_a_send_packet_frame() {
    let now = Instant::now();
    let (mut c, _server) = connected(now);
    let dst = NodePublicKey::from_bytes([4; 32]);
    c.send_packet(dst, b"out").unwrap();
    let frames = written(&mut c, Policy::ServerRunning);
    assert_eq!(
        frames[0].parse().unwrap(),
        Frame::SendPacket {
            dst,
            packet: b"out"
        }
    );
    let big = vec![0; frame::MAX_PACKET_SIZE + 1];
    assert!(matches!(
        c.send_packet(dst, &big),
        Err(DerpClientError::PacketTooLarge { len: 65_537 })
    ));
}

#[test]
fn server_ping_is_answered_with_pong() {
    let now = Instant::now();
    let (mut c, _server) = connected(now);
    feed(&mut c, now, &encode(&Frame::Ping { data: *b"pingpong" })).unwrap();
    let mut d = FrameDecoder::new();
    d.push(&c.poll_transmit().unwrap());
    let raw = d.next_frame(Policy::Client).unwrap().unwrap();
    assert_eq!(raw.parse().unwrap(), Frame::Pong { data: *b"pingpong" });
}

#[test]
fn peer_gone_health_restarting_and_pong_become_events() {
    let now = Instant::now();
    let (mut c, _server) = connected(now);
    let k = NodePublicKey::from_bytes([5; 32]);
    let mut input = encode(&Frame::PeerGone {
        key: k,
        reason: PeerGoneReason::NotHere,
    });
    input.extend(encode(&Frame::Health {
        problem: "dup".into(),
    }));
    input.extend(encode(&Frame::Health { problem: "".into() }));
    input.extend(encode(&Frame::Restarting {
        reconnect_in: Duration::from_millis(500),
        try_for: Duration::from_secs(5),
    }));
    input.extend(encode(&Frame::Pong { data: [9; 8] }));
    input.extend(encode(&Frame::KeepAlive));
    feed(&mut c, now, &input).unwrap();
    assert_eq!(
        events(&mut c),
        vec![
            ClientEvent::PeerGone {
                key: k,
                reason: PeerGoneReason::NotHere
            },
            ClientEvent::Health {
                problem: Some("dup".into())
            },
            ClientEvent::Health { problem: None },
            ClientEvent::Restarting {
                reconnect_in: Duration::from_millis(500),
                try_for: Duration::from_secs(5)
            },
            ClientEvent::Pong { data: [9; 8] },
        ]
    );
}

#[test]
fn unknown_frame_types_are_ignored() {
    let now = Instant::now();
    let (mut c, _server) = connected(now);
    feed(
        &mut c,
        now,
        &encode(&Frame::Unknown {
            typ: 0xee,
            payload: b"from the future",
        }),
    )
    .unwrap();
    feed(&mut c, now, &encode(&Frame::WatchConns)).unwrap();
    assert!(events(&mut c).is_empty());
    assert!(c.is_connected());
}

#[test]
fn short_frames_are_dropped_not_fatal() {
    // Go's client: "[unexpected] dropping short packet from DERP server".
    let now = Instant::now();
    let (mut c, _server) = connected(now);
    feed(
        &mut c,
        now,
        &encode(&Frame::Unknown {
            typ: 0x05,
            payload: &[0; 31],
        }),
    )
    .unwrap();
    feed(
        &mut c,
        now,
        &encode(&Frame::Unknown {
            typ: 0x12,
            payload: &[0; 7],
        }),
    )
    .unwrap();
    assert!(events(&mut c).is_empty());
    assert!(c.poll_transmit().is_none());
}

#[test]
fn frame_over_1_mib_closes_the_connection() {
    let now = Instant::now();
    let (mut c, _server) = connected(now);
    let mut hdr = vec![0x05];
    hdr.extend_from_slice(&((1u32 << 20) + 1).to_be_bytes());
    let err = c.handle_input(now, &hdr).unwrap_err();
    assert!(
        matches!(err, DerpClientError::Frame(FrameError::TooLong { .. })),
        "{err}"
    );
}

#[test]
fn idle_for_120_seconds_gives_up() {
    let t0 = Instant::now();
    let (mut c, _server) = connected(t0);
    assert_eq!(c.poll_timeout(), Some(t0 + CLIENT_IDLE_TIMEOUT));
    c.handle_timeout(t0 + Duration::from_secs(119)).unwrap();
    // Any frame resets the idle clock.
    let t1 = t0 + Duration::from_secs(100);
    feed(&mut c, t1, &encode(&Frame::KeepAlive)).unwrap();
    assert_eq!(c.poll_timeout(), Some(t1 + CLIENT_IDLE_TIMEOUT));
    c.handle_timeout(t0 + Duration::from_secs(200)).unwrap();
    let err = c.handle_timeout(t1 + CLIENT_IDLE_TIMEOUT).unwrap_err();
    assert!(matches!(err, DerpClientError::IdleTimeout { idle } if idle == CLIENT_IDLE_TIMEOUT));
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn note_preferred_writes_one_byte_frame() {
    let now = Instant::now();
    let (mut c, _server) = connected(now);
    c.note_preferred(true).unwrap();
    c.note_preferred(false).unwrap();
    let bytes = c.poll_transmit().unwrap();
    assert_eq!(&bytes[..], &[0x07, 0, 0, 0, 1, 1, 0x07, 0, 0, 0, 1, 0]);
}
