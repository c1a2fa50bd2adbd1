//! Receive coalescing for TUN writes (the write-side half of `IFF_VNET_HDR` offload):
//! consecutive in-order segments of one TCP flow, or consecutive datagrams of one UDP flow,
//! are joined into one "super packet" written with a `virtio_net_hdr` asking the kernel to
//! treat it as GSO, so the receiving stack handles one large packet instead of dozens (for
//! UDP the kernel cuts it back into the very same datagrams before any socket sees them).
//! Pure: bytes in, frames out.
//!
//! A segment or datagram joins a run only if its checksum is right: the kernel does not
//! check a GSO frame's checksum again, so a bad one must reach it alone, to be dropped
//! there. An IPv4 datagram sent without a checksum (zero) is left alone too, so it leaves
//! unchanged.

use super::checksum::{PROTO_TCP, PROTO_UDP, fold, pseudo_header, sum16};
use super::offload::{
    F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, TCP_PSH, VNET_HDR_LEN, VnetHdr, set_ip_lengths,
};

const TCP_FLAGS_OK: u8 = 0x10 | TCP_PSH; // ACK, PSH
/// Largest IP packet the kernel takes.
const MAX_TOTAL: usize = 65_535;
/// Most datagrams in one UDP GSO frame (the kernel's `UDP_MAX_SEGMENTS` was 64 for years).
const MAX_UDP_SEGMENTS: usize = 64;

/// Joins segments; hands out frames (vnet header included) ready to write to the TUN.
pub struct Coalescer {
    /// The pending frame: vnet header space, then IP + transport headers, then payloads.
    buf: Vec<u8>,
    pending: Option<Pending>,
    /// Whether UDP datagrams are joined (off once the kernel refused a UDP GSO frame).
    udp: bool,
}

#[derive(Clone, Copy)]
struct Pending {
    v4: bool,
    udp: bool,
    ip_len: usize,
    hdr_len: usize,
    seg: usize,
    count: usize,
    next_seq: u32,
    /// A short segment or PSH ended the run: nothing may follow.
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self {
            buf: Vec::with_capacity(VNET_HDR_LEN + MAX_TOTAL),
            pending: None,
            udp: true,
        }
    }
}

/// Where a TCP or UDP packet's parts are, if it may be coalesced at all.
struct Shape {
    v4: bool,
    udp: bool,
    ip_len: usize,
    hdr_len: usize,
    /// TCP only (0 for UDP).
    seq: u32,
    flags: u8,
}

fn shape(p: &[u8], udp_ok: bool) -> Option<Shape> {
    let (v4, ip_len, proto) = match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]);
            // No options, not a fragment, total length = what we have.
            if ihl != 20 || frag & 0x3fff != 0 || p.len() < 20 {
                return None;
            }
            if usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
                return None;
            }
            (true, 20, p[9])
        }
        6 => {
            if p.len() < 40 || usize::from(u16::from_be_bytes([p[4], p[5]])) != p.len() - 40 {
                return None;
            }
            (false, 40, p[6])
        }
        _ => return None,
    };
    let (s, proto) = match proto {
        6 => (tcp_shape(p, v4, ip_len)?, PROTO_TCP),
        17 if udp_ok => (udp_shape(p, v4, ip_len)?, PROTO_UDP),
        _ => return None,
    };
    let l4 = p.len() - ip_len;
    (fold(sum16(&p[ip_len..], pseudo_header(p, v4, proto, l4))) == 0xffff).then_some(s)
}

/// A TCP segment's shape (its checksum is checked by [`shape`]).
fn tcp_shape(p: &[u8], v4: bool, ip_len: usize) -> Option<Shape> {
    let tcp = p.get(ip_len..ip_len + 20)?;
    let hdr_len = ip_len + usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if hdr_len < ip_len + 20 || hdr_len >= p.len() || flags & !TCP_FLAGS_OK != 0 {
        return None;
    }
    Some(Shape {
        v4,
        udp: false,
        ip_len,
        hdr_len,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags,
    })
}

/// A UDP datagram's shape (its checksum is checked by [`shape`]; one of zero, "none", is
/// refused here).
fn udp_shape(p: &[u8], v4: bool, ip_len: usize) -> Option<Shape> {
    let udp = p.get(ip_len..ip_len + 8)?;
    let l4 = p.len() - ip_len;
    let checksum = u16::from_be_bytes([udp[6], udp[7]]);
    if usize::from(u16::from_be_bytes([udp[4], udp[5]])) != l4 || l4 <= 8 || checksum == 0 {
        return None;
    }
    Some(Shape {
        v4,
        udp: true,
        ip_len,
        hdr_len: ip_len + 8,
        seq: 0,
        flags: 0,
    })
}

impl Coalescer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns joining UDP datagrams on or off (TCP is always joined). The pending run is
    /// kept either way.
    pub fn set_udp(&mut self, on: bool) {
        self.udp = on;
    }

    /// Adds a packet. Frames that are complete (the previous run, when this packet cannot
    /// join it; or this packet itself, when it cannot be coalesced) go to `write`.
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(&[u8])) {
        let Some(s) = shape(packet, self.udp) else {
            self.flush(write);
            write_plain(&mut self.buf, packet, write);
            return;
        };
        let payload_len = packet.len() - s.hdr_len;
        let psh = !s.udp && s.flags & TCP_PSH != 0;
        if let Some(p) = self.pending
            && self.joins(&p, &s, packet)
        {
            self.buf.extend_from_slice(&packet[s.hdr_len..]);
            if psh {
                let flags_at = VNET_HDR_LEN + p.ip_len + 13;
                self.buf[flags_at] |= TCP_PSH;
            }
            self.pending = Some(Pending {
                count: p.count + 1,
                next_seq: s.seq.wrapping_add(payload_len as u32),
                closed: payload_len < p.seg || psh,
                ..p
            });
            return;
        }
        self.flush(write);
        self.buf.clear();
        self.buf.resize(VNET_HDR_LEN, 0);
        self.buf.extend_from_slice(packet);
        self.pending = Some(Pending {
            v4: s.v4,
            udp: s.udp,
            ip_len: s.ip_len,
            hdr_len: s.hdr_len,
            seg: payload_len,
            count: 1,
            next_seq: s.seq.wrapping_add(payload_len as u32),
            closed: psh,
        });
    }

    fn joins(&self, p: &Pending, s: &Shape, packet: &[u8]) -> bool {
        if p.closed
            || s.v4 != p.v4
            || s.udp != p.udp
            || s.hdr_len != p.hdr_len
            || (!s.udp && s.seq != p.next_seq)
            || (s.udp && p.count >= MAX_UDP_SEGMENTS)
        {
            return false;
        }
        let payload = packet.len() - s.hdr_len;
        if payload > p.seg || self.buf.len() - VNET_HDR_LEN + payload > MAX_TOTAL {
            return false;
        }
        let first = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + p.hdr_len];
        let ip_same = if p.v4 {
            // version/IHL/TOS, flags+fragment, TTL, protocol, addresses
            first[0..2] == packet[0..2]
                && first[6..10] == packet[6..10]
                && first[12..20] == packet[12..20]
        } else {
            first[0..4] == packet[0..4] && first[6..40] == packet[6..40]
        };
        let t = p.ip_len;
        if s.udp {
            // ports; the lengths and checksum are the datagram's own
            return ip_same && first[t..t + 4] == packet[t..t + 4];
        }
        // ports, ack, data offset, window, urgent, options: all but seq, flags and checksum
        ip_same
            && first[t..t + 4] == packet[t..t + 4]
            && first[t + 8..t + 13] == packet[t + 8..t + 13]
            && first[t + 14..t + 16] == packet[t + 14..t + 16]
            && first[t + 18..p.hdr_len] == packet[t + 18..p.hdr_len]
    }

    /// Writes the pending run, if any.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8])) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if p.count == 1 {
            self.buf[..VNET_HDR_LEN].fill(0);
            write(&self.buf);
            return;
        }
        let total = self.buf.len() - VNET_HDR_LEN;
        let ip = &mut self.buf[VNET_HDR_LEN..];
        let id = u16::from_be_bytes([ip[4], ip[5]]); // the first segment's, kept
        set_ip_lengths(ip, p.v4, p.ip_len, id);
        // Partial checksum: the pseudo-header sum, as the kernel expects with NEEDS_CSUM.
        let l4 = total - p.ip_len;
        let (proto, csum_offset, gso_type) = match (p.udp, p.v4) {
            (true, _) => (PROTO_UDP, 6, GSO_UDP_L4),
            (false, true) => (PROTO_TCP, 16, GSO_TCPV4),
            (false, false) => (PROTO_TCP, 16, GSO_TCPV6),
        };
        if p.udp {
            ip[p.ip_len + 4..p.ip_len + 6].copy_from_slice(&(l4 as u16).to_be_bytes());
        }
        let pseudo = fold(pseudo_header(ip, p.v4, proto, l4));
        let at = p.ip_len + usize::from(csum_offset);
        ip[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: p.hdr_len as u16,
            gso_size: p.seg as u16,
            csum_start: p.ip_len as u16,
            csum_offset,
        };
        self.buf[..VNET_HDR_LEN].copy_from_slice(&hdr.encode());
        write(&self.buf);
    }
}

fn write_plain(buf: &mut Vec<u8>, packet: &[u8], write: &mut impl FnMut(&[u8])) {
    buf.clear();
    buf.resize(VNET_HDR_LEN, 0);
    buf.extend_from_slice(packet);
    write(buf);
    buf.clear();
}

#[cfg(test)]
mod tests {
    use super::super::offload::{VnetHdr, segment};
    use super::*;

    /// Segments that `offload::segment` cut from a TSO packet (valid checksums).
    fn segments(v4: bool, payload: usize, flags: u8) -> Vec<Vec<u8>> {
        let ip_len = if v4 { 20 } else { 40 };
        let mut p = vec![0u8; ip_len + 32 + payload];
        let total = p.len();
        if v4 {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[6] = 0x40;
            p[8] = 64;
            p[9] = 6;
            p[12..16].copy_from_slice(&[10, 0, 0, 1]);
            p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        } else {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            p[6] = 6;
            p[7] = 64;
            p[23] = 1;
            p[39] = 2;
        }
        let t = ip_len;
        p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&7u32.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&99u32.to_be_bytes());
        p[t + 12] = 8 << 4; // 32-byte TCP header: 12 bytes of options (timestamps)
        p[t + 13] = flags;
        p[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]);
        for (i, b) in p[t + 32..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let hdr = VnetHdr {
            flags: 0,
            gso_type: if v4 { 1 } else { 4 },
            hdr_len: (ip_len + 32) as u16,
            gso_size: 1000,
            csum_start: ip_len as u16,
            csum_offset: 16,
        };
        let mut scratch = vec![0u8; 65_536];
        let mut out = Vec::new();
        segment(&hdr, &mut p, &mut scratch, |s| out.push(s.to_vec())).unwrap();
        out
    }

    fn frames(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut c = Coalescer::new();
        let mut out = Vec::new();
        for p in packets {
            c.push(p, &mut |f| out.push(f.to_vec()));
        }
        c.flush(&mut |f| out.push(f.to_vec()));
        out
    }

    #[test]
    fn in_order_segments_of_one_flow_become_one_gso_frame_that_segments_back() {
        for v4 in [true, false] {
            let segs = segments(v4, 4500, 0x18);
            let out = frames(&segs);
            assert_eq!(out.len(), 1, "one frame");
            let hdr = VnetHdr::parse(&out[0]).unwrap();
            assert_eq!(hdr.gso_size, 1000);
            assert_eq!(hdr.gso_type, if v4 { GSO_TCPV4 } else { GSO_TCPV6 });
            // The kernel would cut it back into the very same segments.
            let mut body = out[0][VNET_HDR_LEN..].to_vec();
            let mut scratch = vec![0u8; 65_536];
            let mut again = Vec::new();
            segment(&hdr, &mut body, &mut scratch, |s| again.push(s.to_vec())).unwrap();
            assert_eq!(again.len(), segs.len());
            for (a, b) in again.iter().zip(&segs) {
                let ip_len = if v4 { 20 } else { 40 };
                // Headers may differ only in the IPv4 id; payload and checksummed fields match.
                assert_eq!(a[ip_len..], b[ip_len..]);
            }
        }
    }

    #[test]
    fn a_gap_a_new_flow_or_a_non_tcp_packet_ends_the_run() {
        let segs = segments(true, 4000, 0x10);
        // gap: drop the second segment
        let gap = vec![segs[0].clone(), segs[2].clone(), segs[3].clone()];
        assert_eq!(frames(&gap).len(), 2);
        // another flow in between
        let mut other = segs[1].clone();
        other[20] ^= 1; // source port
        let mixed = vec![segs[0].clone(), other, segs[1].clone()];
        assert_eq!(frames(&mixed).len(), 3);
        // UDP passes through on its own, with a zero vnet header
        let mut udp = segs[0].clone();
        udp[9] = 17;
        let out = frames(&[segs[0].clone(), udp.clone(), segs[1].clone()]);
        assert_eq!(out.len(), 3);
        assert_eq!(&out[1][..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&out[1][VNET_HDR_LEN..], &udp[..]);
    }

    /// UDP datagrams of one flow with the given payload sizes, valid checksums and
    /// consecutive IPv4 ids (as a sender's kernel makes them).
    fn datagrams(v4: bool, sizes: &[usize]) -> Vec<Vec<u8>> {
        let ip_len = if v4 { 20 } else { 40 };
        let mut out = Vec::new();
        for (n, &size) in sizes.iter().enumerate() {
            let mut p = segments(v4, 100, 0x10)[0][..ip_len].to_vec();
            p.resize(ip_len + 8 + size, 0);
            let total = p.len();
            if v4 {
                p[9] = 17;
                p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                p[4..6].copy_from_slice(&(500 + n as u16).to_be_bytes());
                p[10..12].copy_from_slice(&[0, 0]);
                let c = !fold(sum16(&p[..20], 0));
                p[10..12].copy_from_slice(&c.to_be_bytes());
            } else {
                p[6] = 17;
                p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            }
            let u = ip_len;
            p[u..u + 2].copy_from_slice(&4433u16.to_be_bytes());
            p[u + 2..u + 4].copy_from_slice(&60000u16.to_be_bytes());
            p[u + 4..u + 6].copy_from_slice(&((total - u) as u16).to_be_bytes());
            for (i, b) in p[u + 8..].iter_mut().enumerate() {
                *b = (i * 3 + n) as u8;
            }
            let c = !fold(sum16(&p[u..], pseudo_header(&p, v4, PROTO_UDP, total - u)));
            p[u + 6..u + 8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            out.push(p);
        }
        out
    }

    /// Segments every frame back, as the kernel would.
    fn unframe(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut scratch = vec![0u8; 65_536];
        let mut out = Vec::new();
        for f in frames {
            let hdr = VnetHdr::parse(f).unwrap();
            let mut body = f[VNET_HDR_LEN..].to_vec();
            segment(&hdr, &mut body, &mut scratch, |s| out.push(s.to_vec())).unwrap();
        }
        out
    }

    #[test]
    fn datagrams_of_one_udp_flow_become_one_gso_frame_that_cuts_back_to_the_same_datagrams() {
        for v4 in [true, false] {
            let dgrams = datagrams(v4, &[1200, 1200, 1200, 1200, 333]);
            let out = frames(&dgrams);
            assert_eq!(out.len(), 1, "one frame");
            let hdr = VnetHdr::parse(&out[0]).unwrap();
            assert_eq!(hdr.gso_type, GSO_UDP_L4);
            assert_eq!(hdr.gso_size, 1200);
            assert_eq!(hdr.csum_offset, 6);
            assert_eq!(
                unframe(&out),
                dgrams,
                "byte for byte, ids and checksums included"
            );
        }
    }

    #[test]
    fn a_udp_run_ends_at_a_longer_datagram_another_flow_or_a_bad_or_missing_checksum() {
        let runs = |packets: &[Vec<u8>]| frames(packets).len();
        // A datagram longer than the first cannot follow it; a shorter one ends the run.
        assert_eq!(runs(&datagrams(true, &[800, 1200, 1200])), 2);
        assert_eq!(runs(&datagrams(true, &[1200, 800, 1200])), 2);
        let mut d = datagrams(true, &[1200, 1200, 1200]);
        d[1][20 + 1] ^= 1; // source port: another flow (checksum now wrong as well)
        assert_eq!(runs(&d), 3);
        let mut d = datagrams(false, &[1200, 1200, 1200]);
        d[1][40 + 8] ^= 0x55; // a payload byte: the checksum no longer matches
        let out = frames(&d);
        assert_eq!(out.len(), 3, "the bad datagram goes alone");
        assert_eq!(&out[1][..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(
            &out[1][VNET_HDR_LEN..],
            &d[1][..],
            "unchanged, for the kernel to drop"
        );
        let mut d = datagrams(true, &[1200, 1200]);
        d[0][26..28].copy_from_slice(&[0, 0]); // IPv4 without a checksum
        let out = frames(&d);
        assert_eq!(out.len(), 2);
        assert_eq!(&out[0][VNET_HDR_LEN..], &d[0][..], "left as it was sent");
    }

    #[test]
    fn a_refused_udp_frame_cuts_into_plain_frames_of_the_same_datagrams() {
        let d = datagrams(false, &[1200, 1200, 1200, 7]);
        let out = frames(&d);
        assert_eq!(out.len(), 1);
        assert!(super::super::offload::is_udp_gso(&out[0]));
        let mut plain = Vec::new();
        let n = super::super::offload::cut_frame(&out[0], |f| plain.push(f.to_vec())).unwrap();
        assert_eq!(n, 4);
        for (f, want) in plain.iter().zip(&d) {
            assert_eq!(&f[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
            assert_eq!(&f[VNET_HDR_LEN..], &want[..]);
        }
    }

    #[test]
    fn udp_runs_are_capped_and_can_be_turned_off() {
        let d = datagrams(true, &[100; 150]);
        let out = frames(&d);
        assert_eq!(out.len(), 3, "64 + 64 + 22");
        assert_eq!(unframe(&out), d);
        let mut c = Coalescer::new();
        c.set_udp(false);
        let mut n = 0;
        for p in &d[..5] {
            c.push(p, &mut |f| {
                assert_eq!(&f[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
                n += 1;
            });
        }
        c.flush(&mut |_| n += 1);
        assert_eq!(n, 5);
    }

    #[test]
    fn a_tcp_segment_with_a_bad_checksum_goes_alone_and_unchanged() {
        let mut segs = segments(true, 4000, 0x10);
        segs[1][20 + 32] ^= 0x01; // a payload byte
        let out = frames(&segs);
        assert_eq!(out.len(), 3, "run, the bad segment, run");
        assert_eq!(&out[1][..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&out[1][VNET_HDR_LEN..], &segs[1][..]);
    }

    #[test]
    fn a_single_segment_is_written_as_a_plain_packet() {
        let segs = segments(false, 800, 0x18);
        let out = frames(&segs);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&out[0][VNET_HDR_LEN..], &segs[0][..]);
    }

    #[test]
    fn syn_fin_and_rst_are_never_coalesced() {
        for flag in [0x02, 0x01, 0x04] {
            let mut segs = segments(true, 2000, 0x10);
            segs[1][20 + 13] |= flag;
            assert_eq!(frames(&segs).len(), 2, "flag {flag:#x}");
        }
    }

    #[test]
    fn garbage_passes_through_without_panicking() {
        for junk in [
            vec![],
            vec![0x45],
            vec![0x60; 10],
            vec![0x45; 60],
            vec![0xff; 100],
        ] {
            let out = frames(std::slice::from_ref(&junk));
            assert_eq!(out.len(), 1);
            assert_eq!(&out[0][VNET_HDR_LEN..], &junk[..]);
        }
    }
}
