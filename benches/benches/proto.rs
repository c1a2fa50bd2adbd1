//! CoderVPN framing: encode + decode of a `PeerUpdate` with 100 agents.
//!
//! `cargo bench -p codervpn-benches --bench proto`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use codervpn_benches::peer_update_with_agents;
use codervpn_proto::frame::{FrameDecoder, decode_message, encode_frame};
use codervpn_proto::vpn::{TunnelMessage, tunnel_message};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn peer_update_100(c: &mut Criterion) {
    let msg = TunnelMessage {
        rpc: None,
        msg: Some(tunnel_message::Msg::PeerUpdate(peer_update_with_agents(
            100,
        ))),
    };
    let mut wire = BytesMut::new();
    encode_frame(&msg, "TunnelMessage", &mut wire).unwrap();
    let frame_len = wire.len();

    let mut g = c.benchmark_group("peer_update_100_agents");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        let mut out = BytesMut::with_capacity(frame_len);
        b.iter(|| {
            out.clear();
            encode_frame(black_box(&msg), "TunnelMessage", &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.bench_function("decode", |b| {
        let mut dec = FrameDecoder::new();
        b.iter(|| {
            dec.push(black_box(&wire));
            let body = dec.next_frame().unwrap().unwrap();
            black_box(decode_message::<TunnelMessage>(&body, "TunnelMessage").unwrap())
        })
    });
    g.bench_function("encode_decode", |b| {
        let mut out = BytesMut::with_capacity(frame_len);
        let mut dec = FrameDecoder::new();
        b.iter(|| {
            out.clear();
            encode_frame(black_box(&msg), "TunnelMessage", &mut out).unwrap();
            dec.push(&out);
            let body = dec.next_frame().unwrap().unwrap();
            black_box(decode_message::<TunnelMessage>(&body, "TunnelMessage").unwrap())
        })
    });
    g.finish();
    println!("frame size: {frame_len} bytes");
}

criterion_group!(benches, peer_update_100);
criterion_main!(benches);
