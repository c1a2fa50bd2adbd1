//! Fuzzes DERP frame decoding on both sides of a connection.
//!
//! Input layout: `[schedule] [mode] ++ stream`.
//! * `schedule` picks how `stream` is cut into chunks (low 3 bits: largest chunk 1, 2, 3, 7,
//!   16, 64, 512 bytes or everything at once; high 5 bits seed the chunk-length generator).
//! * `mode & 3` picks the consumer:
//!   0. `FrameDecoder` under every `Policy` (client, server handshake, server running);
//!   1. a `DerpClient` core (bit 2 set: fed from the first byte, so the greeting path; clear:
//!      after a valid server key + server info, so the running path);
//!   2. a `ServerConn` core (bit 2 set: from the first byte, the handshake path; clear: after
//!      a valid client info, the running path);
//!   3. both cores, after their handshakes, each fed the same stream.
//!   Bits 3..: fake-clock steps between chunks (0–7 × 17 s), so timers fire too.
//!
//! Checks: no panic anywhere; the decoder yields the same frames and the same error
//! whatever the chunking (reference: the whole stream pushed at once); every frame that
//! parses re-encodes to bytes that decode and parse to an equal frame; once a core returns an
//! error it stays closed.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codervpn_engine::net::derp::decoder::{FrameDecoder, Policy};
use codervpn_engine::net::derp::frame::{Frame, FrameError, RawFrame};
use codervpn_engine::net::derp::keys::{ClientInfo, NodePrivateKey, ServerInfo};
use codervpn_engine::net::derp::{
    ClientConfig, DerpClient, DerpClientError, ServerConn, ServerConnConfig, ServerConnError,
    ServerConnEvent,
};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    server: NodePrivateKey,
    /// When the templates below were made; fake time starts here.
    t0: Instant,
    /// Fresh cores, and cores that completed a valid handshake. Cloned per input, so no
    /// X25519 work is repeated per run.
    client_new: DerpClient,
    client_running: DerpClient,
    server_new: ServerConn,
    server_running: ServerConn,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let t0 = Instant::now();
        let client = NodePrivateKey::from_bytes([0x11; 32]);
        let server = NodePrivateKey::from_bytes([0x51; 32]);
        let mut hello = BytesMut::new();
        Frame::ServerKey { key: server.public_key() }.encode(&mut hello).unwrap();
        let sealed = server.seal_to_with_nonce(&client.public_key(), &ServerInfo::default().to_json(), [1; 24]);
        Frame::ServerInfo { sealed: &sealed }.encode(&mut hello).unwrap();
        let mut chello = BytesMut::new();
        let sealed = client.seal_to_with_nonce(&server.public_key(), &ClientInfo::default().to_json(), [2; 24]);
        Frame::ClientInfo { key: client.public_key(), sealed: &sealed }.encode(&mut chello).unwrap();

        let client_new = DerpClient::new(client.clone(), ClientConfig::default(), t0);
        let mut client_running = client_new.clone();
        client_running.handle_input(t0, &hello).expect("valid server hello");
        assert!(client_running.is_connected());
        while client_running.poll_transmit().is_some() {}
        while client_running.poll_event().is_some() {}

        let server_new = ServerConn::new(server.clone(), ServerConnConfig::default(), t0);
        let mut server_running = server_new.clone();
        server_running.handle_input(t0, &chello).expect("valid client hello");
        assert_eq!(server_running.client_key(), Some(client.public_key()));
        while server_running.poll_transmit().is_some() {}
        while server_running.poll_event().is_some() {}
        Fixture { server, t0, client_new, client_running, server_new, server_running }
    })
}

/// Chunk lengths chosen by the schedule byte.
struct Chunks {
    max: usize,
    state: u64,
}

impl Chunks {
    fn new(schedule: u8) -> Self {
        const MAX: [usize; 8] = [1, 2, 3, 7, 16, 64, 512, usize::MAX];
        Self { max: MAX[usize::from(schedule & 7)], state: 0x9E37_79B9_7F4A_7C15 ^ u64::from(schedule >> 3) }
    }

    fn split<'a>(&mut self, mut rest: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        while !rest.is_empty() {
            let n = if self.max == usize::MAX {
                rest.len()
            } else {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                1 + (self.state % self.max as u64) as usize
            };
            let (a, b) = rest.split_at(n.min(rest.len()));
            out.push(a);
            rest = b;
        }
        out
    }
}

/// Frames, then the error that stopped the stream, if any.
fn drain(chunks: &[&[u8]], policy: Policy) -> (Vec<RawFrame>, Option<FrameError>) {
    let mut d = FrameDecoder::new();
    let mut frames = Vec::new();
    for c in chunks {
        d.push(c);
        loop {
            match d.next_frame(policy) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    // The decoder stays on the bad header: same answer again.
                    assert_eq!(d.next_frame(policy).unwrap_err(), e);
                    return (frames, Some(e));
                }
            }
        }
    }
    (frames, None)
}

/// Parse → encode → decode → parse gives the same frame.
fn check_round_trip(raw: &RawFrame) {
    let Ok(frame) = raw.parse() else { return };
    let mut out = BytesMut::new();
    frame.encode(&mut out).expect("a parsed frame re-encodes");
    let mut d = FrameDecoder::new();
    d.push(&out);
    let again = d.next_frame(Policy::Client).expect("re-encoded frame decodes").expect("whole frame");
    assert_eq!(d.buffered(), 0);
    assert_eq!(again.parse().expect("re-encoded frame parses"), frame);
}

fn fuzz_decoder(schedule: u8, stream: &[u8]) {
    let chunks = Chunks::new(schedule).split(stream);
    for policy in [Policy::Client, Policy::ServerHandshake, Policy::ServerRunning] {
        let whole = drain(&[stream], policy);
        let chunked = drain(&chunks, policy);
        assert_eq!(whole, chunked, "chunking changed the outcome under {policy:?}");
        for f in &whole.0 {
            check_round_trip(f);
        }
    }
}

fn fuzz_client(chunks: &[&[u8]], handshaken: bool, step: Duration) {
    let f = fixture();
    let mut now = f.t0;
    let mut c = if handshaken { f.client_running.clone() } else { f.client_new.clone() };
    let mut failed = false;
    for chunk in chunks {
        now += step;
        let r = c.handle_input(now, chunk).and_then(|()| c.handle_timeout(now));
        if failed {
            assert!(matches!(r, Err(DerpClientError::Closed)));
        }
        failed |= r.is_err();
        while c.poll_transmit().is_some() {}
        while c.poll_event().is_some() {}
        let _ = c.send_packet(f.server.public_key(), chunk);
    }
}

fn fuzz_server(chunks: &[&[u8]], handshaken: bool, step: Duration) {
    let f = fixture();
    let mut now = f.t0;
    let mut s = if handshaken { f.server_running.clone() } else { f.server_new.clone() };
    let mut failed = false;
    for chunk in chunks {
        now += step;
        let r = s.handle_input(now, chunk).and_then(|()| s.handle_timeout(now));
        if failed {
            assert!(matches!(r, Err(ServerConnError::Closed)));
        }
        failed |= r.is_err();
        while let Some(e) = s.poll_event() {
            if let ServerConnEvent::SendPacket { dst, packet } = e {
                s.note_unknown_destination(now, dst, &packet);
                s.queue_packet(&dst, &packet).expect("a received packet fits a recv frame");
            }
        }
        while s.poll_transmit().is_some() {}
    }
}

fuzz_target!(|data: &[u8]| {
    let [schedule, mode, stream @ ..] = data else { return };
    let step = Duration::from_secs(17 * u64::from((mode >> 3) & 7));
    let chunks = Chunks::new(*schedule).split(stream);
    match mode & 3 {
        0 => fuzz_decoder(*schedule, stream),
        1 => fuzz_client(&chunks, mode & 4 == 0, step),
        2 => fuzz_server(&chunks, mode & 4 == 0, step),
        _ => {
            fuzz_client(&chunks, true, step);
            fuzz_server(&chunks, true, step);
        }
    }
});
