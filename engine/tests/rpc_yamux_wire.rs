#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `yamux` crate as configured by `session::rpc::mux`, checked byte by byte against
//! hashicorp/yamux's wire format (tailnet.md §13.1): the test plays the other end by hand.

use std::sync::Arc;

use codervpn_engine::session::rpc::codec::{self, Id, Kind, PacketReader};
use codervpn_engine::session::rpc::server::serve_mux;
use codervpn_engine::session::rpc::{MuxClient, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const DATA: u8 = 0;
const WINDOW_UPDATE: u8 = 1;
const PING: u8 = 2;
const GO_AWAY: u8 = 3;
const SYN: u16 = 1;
const ACK: u16 = 2;
const FIN: u16 = 4;

#[derive(Debug, PartialEq, Eq)]
struct Frame {
    header: [u8; 12],
    body: Vec<u8>,
}

impl Frame {
    fn kind(&self) -> u8 {
        self.header[1]
    }
    fn flags(&self) -> u16 {
        u16::from_be_bytes([self.header[2], self.header[3]])
    }
    fn stream(&self) -> u32 {
        u32::from_be_bytes(self.header[4..8].try_into().unwrap())
    }
    fn length(&self) -> u32 {
        u32::from_be_bytes(self.header[8..12].try_into().unwrap())
    }
}

fn header(kind: u8, flags: u16, stream: u32, length: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[1] = kind;
    h[2..4].copy_from_slice(&flags.to_be_bytes());
    h[4..8].copy_from_slice(&stream.to_be_bytes());
    h[8..12].copy_from_slice(&length.to_be_bytes());
    h
}

async fn read_frame(io: &mut DuplexStream) -> Frame {
    let mut header = [0u8; 12];
    io.read_exact(&mut header).await.unwrap();
    assert_eq!(header[0], 0, "version byte");
    let mut frame = Frame {
        header,
        body: Vec::new(),
    };
    if frame.kind() == DATA {
        frame.body = vec![0; frame.length() as usize];
        io.read_exact(&mut frame.body).await.unwrap();
    }
    frame
}

/// The next frame that is not one of the crate's round-trip-time pings.
async fn next_frame(io: &mut DuplexStream) -> Frame {
    loop {
        let f = read_frame(io).await;
        if f.kind() == PING && f.flags() == SYN {
            // A ping the crate sends to measure the round trip: session id 0, SYN.
            assert_eq!(f.stream(), 0);
            continue;
        }
        return f;
    }
}

async fn send(io: &mut DuplexStream, header: [u8; 12], body: &[u8]) {
    io.write_all(&header).await.unwrap();
    io.write_all(body).await.unwrap();
}

#[tokio::test]
async fn client_stream_open_and_data_match_the_hashicorp_layout() {
    let (ours, mut raw) = tokio::io::duplex(1 << 20);
    let mux = MuxClient::start(ours);

    let mut first = mux.open().await.unwrap();
    first.write_all(b"hello").await.unwrap();
    first.flush().await.unwrap();
    // The crate opens lazily: SYN rides on the first data frame. Client ids are odd from 1.
    let f = next_frame(&mut raw).await;
    assert_eq!(
        f.header,
        [
            0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05
        ]
    );
    assert_eq!(f.body, b"hello");

    let mut second = mux.open().await.unwrap();
    second.write_all(b"x").await.unwrap();
    second.flush().await.unwrap();
    let f = next_frame(&mut raw).await;
    assert_eq!(f.header, header(DATA, SYN, 3, 1));

    // Accept stream 1 the hashicorp way (window update, ACK, delta 0) and send data on it.
    send(&mut raw, header(WINDOW_UPDATE, ACK, 1, 0), &[]).await;
    send(&mut raw, header(DATA, 0, 1, 3), b"abc").await;
    let mut got = [0u8; 3];
    first.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abc");

    // A ping with SYN is answered with ACK and the same opaque value.
    send(&mut raw, header(PING, SYN, 0, 0xdead_beef), &[]).await;
    assert_eq!(
        next_frame(&mut raw).await.header,
        header(PING, ACK, 0, 0xdead_beef)
    );

    // Half-close: FIN with length 0 (on a data frame; hashicorp uses a window update frame
    // and accepts the flag on either).
    first.shutdown().await.unwrap();
    assert_eq!(next_frame(&mut raw).await.header, header(DATA, FIN, 1, 0));
}

#[tokio::test]
async fn receiver_sends_a_window_update_when_half_the_window_is_consumed() {
    let (ours, mut raw) = tokio::io::duplex(1 << 20);
    let mux = MuxClient::start(ours);
    let mut stream = mux.open().await.unwrap();
    stream.write_all(b"o").await.unwrap();
    stream.flush().await.unwrap();
    next_frame(&mut raw).await;
    send(&mut raw, header(WINDOW_UPDATE, ACK, 1, 0), &[]).await;

    let half = 128 * 1024;
    send(
        &mut raw,
        header(DATA, 0, 1, half),
        &vec![7u8; half as usize],
    )
    .await;
    let mut got = vec![0u8; half as usize];
    stream.read_exact(&mut got).await.unwrap();
    // The crate sends the update from the next read.
    tokio::spawn(async move {
        let mut more = [0u8; 1];
        let _ = stream.read(&mut more).await;
    });
    // Pinned at 256 KiB: the update gives back exactly what was consumed.
    assert_eq!(
        next_frame(&mut raw).await.header,
        header(WINDOW_UPDATE, 0, 1, half)
    );
}

#[tokio::test]
async fn exceeding_the_256_kib_window_is_a_protocol_error_go_away() {
    let (ours, mut raw) = tokio::io::duplex(1 << 20);
    let mux = MuxClient::start(ours);
    let mut stream = mux.open().await.unwrap();
    stream.write_all(b"o").await.unwrap();
    stream.flush().await.unwrap();
    next_frame(&mut raw).await;
    send(&mut raw, header(WINDOW_UPDATE, ACK, 1, 0), &[]).await;

    // Nobody reads the stream, so no window update: 256 KiB fit, one more byte does not.
    let window = 256 * 1024;
    send(
        &mut raw,
        header(DATA, 0, 1, window),
        &vec![0u8; window as usize],
    )
    .await;
    send(&mut raw, header(DATA, 0, 1, 1), &[0]).await;
    assert_eq!(next_frame(&mut raw).await.header, header(GO_AWAY, 0, 0, 1));
    // The crate leaves closing to the peer (hashicorp closes on a protocol-error go away);
    // the session ends with the transport.
    drop(raw);
    let _ = mux.ended().await;
    assert!(mux.is_ended());
}

#[tokio::test]
async fn server_acknowledges_a_hashicorp_style_open_at_once() {
    let (ours, mut raw) = tokio::io::duplex(1 << 20);
    tokio::spawn(serve_mux(ours, Arc::new(Router::new())));

    // hashicorp/yamux opens with a window update carrying SYN and delta 0.
    send(&mut raw, header(WINDOW_UPDATE, SYN, 1, 0), &[]).await;
    // Acknowledged before any reply exists (hashicorp clients give up after 75 s).
    assert_eq!(next_frame(&mut raw).await.header, header(DATA, ACK, 1, 0));

    let mut invoke = Vec::new();
    codec::put_packet(&mut invoke, Id::new(1, 1), Kind::Invoke, false, b"/nope");
    codec::put_packet(&mut invoke, Id::new(1, 2), Kind::Message, false, b"");
    codec::put_packet(&mut invoke, Id::new(1, 3), Kind::CloseSend, false, b"");
    send(&mut raw, header(DATA, 0, 1, invoke.len() as u32), &invoke).await;

    let mut reader = PacketReader::new();
    let packet = loop {
        let f = next_frame(&mut raw).await;
        assert_eq!(f.stream(), 1);
        assert_eq!(f.kind(), DATA, "{f:?}");
        reader.push(&f.body);
        if let Some(p) = reader.next_packet().unwrap() {
            break p;
        }
    };
    assert_eq!(packet.kind, Kind::Error);
    assert_eq!(
        codec::parse_error_data(&packet.data),
        (0, r#"protocol error: unknown rpc: "/nope""#.to_owned())
    );
    // Then the stream is half-closed.
    let f = next_frame(&mut raw).await;
    assert_eq!(f.header, header(DATA, FIN, 1, 0));
}
