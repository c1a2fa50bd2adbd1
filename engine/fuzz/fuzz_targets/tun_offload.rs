//! Fuzzes TUN offload (`device/offload.rs`, `device/coalesce.rs`): the packets the kernel
//! hands us behind a `virtio_net_hdr` and the frames we hand it.
//!
//! The input's first byte picks the half:
//! - even: the rest is a vnet header and a packet as a TUN read gives them; `segment` must
//!   not panic, and every segment it hands out fits the 64 KiB scratch buffer;
//! - odd: the rest is a sequence of packets (each behind a two-byte length) pushed through a
//!   `Coalescer` and flushed; every frame it writes must parse as a vnet header and
//!   `segment` back without error, and segmenting all frames gives back exactly as many
//!   packets as were pushed. When the first byte is 3 mod 4, every packet that looks like
//!   TCP or UDP first gets right lengths and checksum, so runs get joined (random bytes
//!   almost never carry a valid checksum); joined UDP datagrams must come back byte for byte.

#![no_main]

use codervpn_engine::device::checksum::{fold, pseudo_header, sum16};
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
    let mut sent: Vec<Vec<u8>> = Vec::new();
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
        let mut packet = packet.to_vec();
        if mode % 4 == 3 {
            fix_checksum(&mut packet);
        }
        c.push(&packet, &mut |f: &[u8]| frames.push(f.to_vec()));
        pushed += 1;
        bytes_in += packet.len();
        sent.push(packet);
    }
    c.flush(&mut |f: &[u8]| frames.push(f.to_vec()));
    let mut segments = 0usize;
    let mut back: Vec<Vec<u8>> = Vec::new();
    for frame in &mut frames {
        assert!(frame.len() > VNET_HDR_LEN, "a frame without a packet");
        let hdr = VnetHdr::parse(&frame[..VNET_HDR_LEN]).expect("our vnet header parses");
        let udp = hdr.gso_type == 5;
        let n = segment(&hdr, &mut frame[VNET_HDR_LEN..], &mut scratch, |s| {
            back.push(if udp { s.to_vec() } else { Vec::new() })
        })
        .expect("a frame we wrote segments");
        segments += n;
    }
    assert_eq!(segments, pushed, "packets in ({pushed}, {bytes_in} B) vs segments out");
    // Joined UDP datagrams come back as they went in: from the UDP header on for IPv4
    // (the kernel numbers a frame's datagrams from the first one's id), whole for IPv6.
    for (out, sent) in back.iter().zip(&sent) {
        if out.is_empty() {
            continue;
        }
        let skip = if sent[0] >> 4 == 4 { 20 } else { 0 };
        assert_eq!(out[skip..], sent[skip..], "a joined UDP datagram changed");
    }
});

/// Gives a packet that claims to be IPv4 (no options) or IPv6 TCP or UDP the right IP
/// length (and UDP length) and a valid transport checksum.
fn fix_checksum(p: &mut [u8]) {
    let (ip_len, v4, proto) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 40 && p[0] & 0x0f == 5 => (20, true, p[9]),
        Some(6) if p.len() >= 60 => (40, false, p[6]),
        _ => return,
    };
    let at = match proto {
        6 => ip_len + 16,
        17 => ip_len + 6,
        _ => return,
    };
    let total = p.len();
    if v4 {
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    } else {
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    }
    let l4 = total - ip_len;
    if proto == 17 {
        p[ip_len + 4..ip_len + 6].copy_from_slice(&(l4 as u16).to_be_bytes());
    }
    p[at..at + 2].copy_from_slice(&[0, 0]);
    let sum = sum16(&p[ip_len..], pseudo_header(p, v4, u32::from(proto), l4));
    let c = match !fold(sum) {
        0 if proto == 17 => 0xffff,
        c => c,
    };
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
}
