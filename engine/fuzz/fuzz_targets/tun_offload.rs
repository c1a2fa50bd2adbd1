//! Fuzzes TUN offload (`device/offload.rs`, `device/coalesce.rs`): the packets the kernel
//! hands us behind a `virtio_net_hdr` and the frames we hand it.
//!
//! The input's first byte picks the half:
//! - even: the rest is a vnet header and a packet as a TUN read gives them; `segment` must
//!   not panic, and every segment it hands out fits the 64 KiB scratch buffer;
//! - odd: the rest is a sequence of packets (each behind a two-byte length) pushed through a
//!   `Coalescer` and flushed; every frame it writes must parse as a vnet header and
//!   `segment` back without error, and segmenting all frames gives back exactly as many
//!   packets as were pushed, byte for byte in their TCP payloads' total length.

#![no_main]

use codervpn_engine::device::coalesce::Coalescer;
use codervpn_engine::device::offload::{VNET_HDR_LEN, VnetHdr, segment};
use libfuzzer_sys::fuzz_target;

const SCRATCH: usize = 65_536 + 128;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut scratch = vec![0u8; SCRATCH];
    if mode % 2 == 0 {
        let Some(hdr) = rest.get(..VNET_HDR_LEN) else {
            return;
        };
        let Ok(hdr) = VnetHdr::parse(hdr) else {
            return;
        };
        let mut packet = rest[VNET_HDR_LEN..].to_vec();
        let mut seen = 0;
        if let Ok(n) = segment(&hdr, &mut packet, &mut scratch, |seg| {
            assert!(seg.len() <= SCRATCH);
            seen += 1;
        }) {
            assert_eq!(n, seen, "segment's count is what it handed out");
        }
        return;
    }
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut c = Coalescer::new();
    let mut pushed = 0usize;
    let mut bytes_in = 0usize;
    let mut cur = rest;
    while cur.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([cur[0], cur[1]]));
        let take = len.min(cur.len() - 2);
        let packet = &cur[2..2 + take];
        cur = &cur[2 + take..];
        if packet.is_empty() {
            continue;
        }
        c.push(packet, &mut |f: &[u8]| frames.push(f.to_vec()));
        pushed += 1;
        bytes_in += packet.len();
    }
    c.flush(&mut |f: &[u8]| frames.push(f.to_vec()));
    let mut segments = 0usize;
    for frame in &mut frames {
        assert!(frame.len() > VNET_HDR_LEN, "a frame without a packet");
        let hdr = VnetHdr::parse(&frame[..VNET_HDR_LEN]).expect("our vnet header parses");
        let n = segment(&hdr, &mut frame[VNET_HDR_LEN..], &mut scratch, |_| {})
            .expect("a frame we wrote segments");
        segments += n;
    }
    assert_eq!(segments, pushed, "packets in ({pushed}, {bytes_in} B) vs segments out");
});
