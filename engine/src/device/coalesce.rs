//! TCP receive coalescing for TUN writes (the write-side half of `IFF_VNET_HDR` offload):
//! consecutive in-order segments of one TCP flow are joined into one "super packet" written
//! with a `virtio_net_hdr` asking the kernel to treat it as GSO, so the receiving stack
//! handles one large packet instead of dozens. Pure: bytes in, frames out.

use super::offload::{VNET_HDR_LEN, VnetHdr, fold, sum16};

const F_NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const TCP_FLAGS_OK: u8 = 0x10 | 0x08; // ACK, PSH
const TCP_PSH: u8 = 0x08;
/// Largest IP packet the kernel takes.
const MAX_TOTAL: usize = 65_535;

/// Joins segments; hands out frames (vnet header included) ready to write to the TUN.
pub struct Coalescer {
    /// The pending frame: vnet header space, then IP + TCP headers, then payloads.
    buf: Vec<u8>,
    pending: Option<Pending>,
}

#[derive(Clone, Copy)]
struct Pending {
    v4: bool,
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
        }
    }
}

/// Where a TCP packet's parts are, if it may be coalesced at all.
struct Shape {
    v4: bool,
    ip_len: usize,
    hdr_len: usize,
    seq: u32,
    flags: u8,
}

fn shape(p: &[u8]) -> Option<Shape> {
    let (v4, ip_len) = match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]);
            // No options, TCP, not a fragment, total length = what we have.
            if ihl != 20 || p.get(9) != Some(&6) || frag & 0x3fff != 0 {
                return None;
            }
            if usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
                return None;
            }
            (true, 20)
        }
        6 => {
            if p.get(6) != Some(&6)
                || p.len() < 40
                || usize::from(u16::from_be_bytes([p[4], p[5]])) != p.len() - 40
            {
                return None;
            }
            (false, 40)
        }
        _ => return None,
    };
    let tcp = p.get(ip_len..ip_len + 20)?;
    let hdr_len = ip_len + usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if hdr_len < ip_len + 20 || hdr_len >= p.len() || flags & !TCP_FLAGS_OK != 0 {
        return None;
    }
    Some(Shape {
        v4,
        ip_len,
        hdr_len,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags,
    })
}

impl Coalescer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a packet. Frames that are complete (the previous run, when this packet cannot
    /// join it; or this packet itself, when it cannot be coalesced) go to `write`.
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(&[u8])) {
        let Some(s) = shape(packet) else {
            self.flush(write);
            write_plain(&mut self.buf, packet, write);
            return;
        };
        if let Some(p) = self.pending
            && self.joins(&p, &s, packet)
        {
            let payload = &packet[s.hdr_len..];
            self.buf.extend_from_slice(payload);
            let closed = payload.len() < p.seg || s.flags & TCP_PSH != 0;
            if s.flags & TCP_PSH != 0 {
                let flags_at = VNET_HDR_LEN + p.ip_len + 13;
                self.buf[flags_at] |= TCP_PSH;
            }
            self.pending = Some(Pending {
                count: p.count + 1,
                next_seq: s.seq.wrapping_add(payload.len() as u32),
                closed,
                ..p
            });
            return;
        }
        self.flush(write);
        let payload_len = packet.len() - s.hdr_len;
        self.buf.clear();
        self.buf.resize(VNET_HDR_LEN, 0);
        self.buf.extend_from_slice(packet);
        self.pending = Some(Pending {
            v4: s.v4,
            ip_len: s.ip_len,
            hdr_len: s.hdr_len,
            seg: payload_len,
            count: 1,
            next_seq: s.seq.wrapping_add(payload_len as u32),
            closed: s.flags & TCP_PSH != 0,
        });
    }

    fn joins(&self, p: &Pending, s: &Shape, packet: &[u8]) -> bool {
        if p.closed || s.v4 != p.v4 || s.hdr_len != p.hdr_len || s.seq != p.next_seq {
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
        if p.v4 {
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum16(&ip[..20], 0));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            ip[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        }
        // Partial checksum: the pseudo-header sum, as the kernel expects with NEEDS_CSUM.
        let l4 = total - p.ip_len;
        let (src, dst) = if p.v4 {
            (12..16, 16..20)
        } else {
            (8..24, 24..40)
        };
        let pseudo = fold(sum16(&ip[dst], sum16(&ip[src], 0)) + 6 + l4 as u32);
        ip[p.ip_len + 16..p.ip_len + 18].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if p.v4 { GSO_TCPV4 } else { GSO_TCPV6 },
            hdr_len: p.hdr_len as u16,
            gso_size: p.seg as u16,
            csum_start: p.ip_len as u16,
            csum_offset: 16,
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
