//! TUN segmentation offload (`IFF_VNET_HDR` + `TUNSETOFFLOAD`): the kernel hands us TCP
//! and UDP "super packets" of up to 64 KiB behind a 10-byte `virtio_net_hdr`, with the
//! transport checksum left partial; we cut them into MSS-sized TCP segments, or
//! `gso_size`-sized UDP datagrams (an application's `UDP_SEGMENT` send, kept whole by USO),
//! with correct headers and checksums. Pure functions, tested on hand-built packets.
//!
//! The header's `hdr_len` is not trusted: the kernel reports the skb's linear length there,
//! which on a forwarding path can include payload. The header length is read from the
//! packet instead (`csum_start` plus the TCP data offset, or plus 8 for UDP).

use std::io;

use super::checksum::{PROTO_TCP, PROTO_UDP, fold, pseudo_header, sum16};

/// `struct virtio_net_hdr` without `num_buffers`: what a TUN with `IFF_VNET_HDR` uses.
pub const VNET_HDR_LEN: usize = 10;

// `virtio_net_hdr` flags and GSO types (`include/uapi/linux/virtio_net.h`).
pub(super) const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
pub(super) const GSO_TCPV4: u8 = 1;
pub(super) const GSO_TCPV6: u8 = 4;
pub(super) const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

const TCP_FIN: u8 = 0x01;
pub(super) const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// The fields of a `virtio_net_hdr` (little-endian on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> io::Result<Self> {
        let b: &[u8; VNET_HDR_LEN] = b
            .get(..VNET_HDR_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| invalid("packet shorter than its virtio_net_hdr"))?;
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_le_bytes([b[2], b[3]]),
            gso_size: u16::from_le_bytes([b[4], b[5]]),
            csum_start: u16::from_le_bytes([b[6], b[7]]),
            csum_offset: u16::from_le_bytes([b[8], b[9]]),
        })
    }

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// Whether `frame` (vnet header first) is a UDP GSO frame.
pub fn is_udp_gso(frame: &[u8]) -> bool {
    frame.get(1).is_some_and(|t| t & !GSO_ECN == GSO_UDP_L4)
}

/// Cuts a GSO frame (vnet header first) into plain frames — a zeroed vnet header, then
/// one packet — for a kernel that refused the frame whole. Returns how many it made.
pub fn cut_frame(frame: &[u8], mut each: impl FnMut(&[u8])) -> io::Result<usize> {
    let hdr = VnetHdr::parse(frame)?;
    let mut body = frame[VNET_HDR_LEN..].to_vec();
    let mut scratch = vec![0u8; 65_536];
    let mut plain = vec![0u8; VNET_HDR_LEN];
    segment(&hdr, &mut body, &mut scratch, |p| {
        plain.truncate(VNET_HDR_LEN);
        plain.extend_from_slice(p);
        each(&plain);
    })
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Splits `packet` (the bytes after the vnet header) into wire-ready IP packets, each
/// built in `scratch` and handed to `each`. Returns how many it produced.
pub fn segment(
    hdr: &VnetHdr,
    packet: &mut [u8],
    scratch: &mut [u8],
    mut each: impl FnMut(&[u8]),
) -> io::Result<usize> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                finish_partial_checksum(packet, hdr.csum_start.into(), hdr.csum_offset.into())?;
            }
            each(packet);
            Ok(1)
        }
        t @ (GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4) => {
            let ip_len = usize::from(hdr.csum_start);
            let size = usize::from(hdr.gso_size);
            let v4 = packet.first().map(|b| b >> 4) == Some(4);
            if size == 0 || ip_len < if v4 { 20 } else { 40 } {
                return Err(invalid("malformed GSO packet headers"));
            }
            let g = Gso { v4, ip_len, size };
            if t == GSO_UDP_L4 {
                segment_udp(g, packet, scratch, each)
            } else {
                segment_tcp(g, packet, scratch, each)
            }
        }
        other => Err(invalid(&format!("unsupported GSO type {other}"))),
    }
}

/// The kernel stored the pseudo-header sum in the checksum field; fold in the rest.
fn finish_partial_checksum(packet: &mut [u8], start: usize, offset: usize) -> io::Result<()> {
    let field = start + offset;
    if field + 2 > packet.len() {
        return Err(invalid("checksum offset beyond the packet"));
    }
    let sum = fold(sum16(&packet[start..], 0));
    let csum = !sum;
    packet[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// What a GSO packet's virtio header says about it, checked.
#[derive(Clone, Copy)]
struct Gso {
    v4: bool,
    /// Where the transport header starts (`csum_start`).
    ip_len: usize,
    /// Payload bytes per segment (`gso_size`, never 0).
    size: usize,
}

fn segment_tcp(
    g: Gso,
    packet: &[u8],
    scratch: &mut [u8],
    mut each: impl FnMut(&[u8]),
) -> io::Result<usize> {
    let Gso { v4, ip_len, size } = g;
    let data_offset = packet
        .get(ip_len + 12)
        .map_or(0, |b| usize::from(b >> 4) * 4);
    let headers = ip_len + data_offset;
    if data_offset < 20 || headers > packet.len() {
        return Err(invalid("malformed TSO packet headers"));
    }
    let seq0 = u32::from_be_bytes([
        packet[ip_len + 4],
        packet[ip_len + 5],
        packet[ip_len + 6],
        packet[ip_len + 7],
    ]);
    let flags0 = packet[ip_len + 13];
    cut(packet, g, headers, scratch, |i, count, seg| {
        let tcp = ip_len;
        let seq = seq0.wrapping_add((i * size) as u32);
        seg[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 != count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i != 0 {
            flags &= !TCP_CWR;
        }
        seg[tcp + 13] = flags;
        seg[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
        let c = !fold(sum16(
            &seg[tcp..],
            pseudo_header(seg, v4, PROTO_TCP, seg.len() - tcp),
        ));
        seg[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
        each(seg);
    })
}

/// Cuts a UDP GSO packet into datagrams of `size` payload bytes (the last may be
/// shorter), each with its own lengths, IPv4 id and full checksum.
fn segment_udp(
    g: Gso,
    packet: &[u8],
    scratch: &mut [u8],
    mut each: impl FnMut(&[u8]),
) -> io::Result<usize> {
    let Gso { v4, ip_len, .. } = g;
    let headers = ip_len + 8;
    if headers > packet.len() {
        return Err(invalid("malformed UDP GSO packet headers"));
    }
    cut(packet, g, headers, scratch, |_, _, seg| {
        let udp = ip_len;
        let l4 = seg.len() - udp;
        seg[udp + 4..udp + 6].copy_from_slice(&(l4 as u16).to_be_bytes());
        seg[udp + 6..udp + 8].copy_from_slice(&[0, 0]);
        let c = match !fold(sum16(&seg[udp..], pseudo_header(seg, v4, PROTO_UDP, l4))) {
            0 => 0xffff, // a computed zero is sent as all ones (RFC 768)
            c => c,
        };
        seg[udp + 6..udp + 8].copy_from_slice(&c.to_be_bytes());
        each(seg);
    })
}

/// Builds each piece of `packet` in `scratch` — its `headers` bytes, then the next `size`
/// bytes of payload (the last piece may be shorter; an empty payload makes one piece) — with
/// the IP lengths (and IPv4 id) set, and hands it to `fill(index, count, piece)` to finish
/// the transport header. Returns how many pieces there were.
fn cut(
    packet: &[u8],
    Gso { v4, ip_len, size }: Gso,
    headers: usize,
    scratch: &mut [u8],
    mut fill: impl FnMut(usize, usize, &mut [u8]),
) -> io::Result<usize> {
    let payload = &packet[headers..];
    let id0 = u16::from_be_bytes([packet[4], packet[5]]);
    let count = payload.len().div_ceil(size).max(1);
    for i in 0..count {
        let chunk = &payload[(i * size).min(payload.len())..((i + 1) * size).min(payload.len())];
        let total = headers + chunk.len();
        let seg = scratch
            .get_mut(..total)
            .ok_or_else(|| invalid("segment larger than the scratch buffer"))?;
        seg[..headers].copy_from_slice(&packet[..headers]);
        seg[headers..].copy_from_slice(chunk);
        set_ip_lengths(seg, v4, ip_len, id0.wrapping_add(i as u16));
        fill(i, count, seg);
    }
    Ok(count)
}

/// Sets the IP length field for `seg`'s size (and, for IPv4, its id and header checksum).
pub(super) fn set_ip_lengths(seg: &mut [u8], v4: bool, ip_len: usize, id: u16) {
    let total = seg.len();
    if v4 {
        seg[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        seg[4..6].copy_from_slice(&id.to_be_bytes());
        seg[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(sum16(&seg[..ip_len], 0));
        seg[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        seg[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify_tcp(seg: &[u8], v4: bool) {
        let ip_len = if v4 { 20 } else { 40 };
        if v4 {
            assert_eq!(fold(sum16(&seg[..20], 0)), 0xffff, "IPv4 header checksum");
            assert_eq!(usize::from(u16::from_be_bytes([seg[2], seg[3]])), seg.len());
        } else {
            assert_eq!(
                usize::from(u16::from_be_bytes([seg[4], seg[5]])),
                seg.len() - 40
            );
        }
        let l4 = seg.len() - ip_len;
        assert_eq!(
            fold(sum16(&seg[ip_len..], pseudo_header(seg, v4, PROTO_TCP, l4))),
            0xffff,
            "TCP checksum"
        );
    }

    /// A TSO super packet as the kernel writes it: partial checksum (pseudo-header sum).
    fn super_packet(v4: bool, payload: usize, flags: u8) -> (VnetHdr, Vec<u8>) {
        let ip_len = if v4 { 20 } else { 40 };
        let mut p = vec![0u8; ip_len + 20 + payload];
        let total = p.len();
        if v4 {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[4..6].copy_from_slice(&100u16.to_be_bytes());
            p[8] = 64;
            p[9] = 6;
            p[12..16].copy_from_slice(&[10, 0, 0, 1]);
            p[16..20].copy_from_slice(&[10, 0, 0, 2]);
            let c = !fold(sum16(&p[..20], 0));
            p[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            p[6] = 6;
            p[7] = 64;
            p[8] = 0xfd;
            p[23] = 1;
            p[24] = 0xfd;
            p[39] = 2;
        }
        let t = ip_len;
        p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&0xffff_ff00u32.to_be_bytes()); // wraps
        p[t + 12] = 5 << 4;
        p[t + 13] = flags;
        for (i, b) in p[t + 20..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let partial = fold(pseudo_header(&p, v4, PROTO_TCP, total - ip_len));
        p[t + 16..t + 18].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 },
            hdr_len: (ip_len + 20) as u16,
            gso_size: 1000,
            csum_start: ip_len as u16,
            csum_offset: 16,
        };
        (hdr, p)
    }

    #[test]
    fn tso_packets_are_cut_into_mss_segments_with_valid_checksums() {
        for v4 in [true, false] {
            let (hdr, mut p) = super_packet(v4, 4500, TCP_PSH | TCP_FIN | TCP_CWR | 0x10);
            let payload: Vec<u8> = p[hdr.hdr_len as usize..].to_vec();
            let mut scratch = vec![0u8; 65_536];
            let mut segs: Vec<Vec<u8>> = Vec::new();
            let n = segment(&hdr, &mut p, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
            assert_eq!(n, 5);
            let ip_len = hdr.csum_start as usize;
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                verify_tcp(s, v4);
                let seq = u32::from_be_bytes([
                    s[ip_len + 4],
                    s[ip_len + 5],
                    s[ip_len + 6],
                    s[ip_len + 7],
                ]);
                assert_eq!(seq, 0xffff_ff00u32.wrapping_add(i as u32 * 1000));
                let flags = s[ip_len + 13];
                assert_eq!(flags & TCP_FIN != 0, i == 4, "FIN only on the last");
                assert_eq!(flags & TCP_PSH != 0, i == 4, "PSH only on the last");
                assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only on the first");
                if v4 {
                    assert_eq!(
                        u16::from_be_bytes([s[4], s[5]]),
                        100 + i as u16,
                        "IP id increments"
                    );
                }
                joined.extend_from_slice(&s[ip_len + 20..]);
            }
            assert_eq!(joined, payload);
            assert_eq!(segs[4].len(), ip_len + 20 + 500);
        }
    }

    #[test]
    fn plain_packet_with_partial_checksum_is_completed() {
        let (mut hdr, mut p) = super_packet(true, 300, 0x18);
        hdr.gso_type = GSO_NONE;
        let mut out = Vec::new();
        segment(&hdr, &mut p, &mut [], |s| out = s.to_vec()).unwrap();
        verify_tcp(&out, true);
    }

    #[test]
    fn malformed_offload_headers_are_errors_not_panics() {
        let (mut hdr, mut p) = super_packet(true, 3000, 0);
        let mut scratch = vec![0u8; 65_536];
        for bad in [
            VnetHdr { gso_size: 0, ..hdr },
            VnetHdr {
                csum_start: 60_000,
                ..hdr
            },
            VnetHdr {
                csum_start: 3,
                ..hdr
            },
            VnetHdr { gso_type: 3, ..hdr },
            VnetHdr {
                gso_type: GSO_UDP_L4,
                gso_size: 0,
                ..hdr
            },
            VnetHdr {
                gso_type: GSO_UDP_L4,
                csum_start: 3,
                ..hdr
            },
            VnetHdr {
                gso_type: GSO_UDP_L4,
                csum_start: 60_000,
                ..hdr
            },
        ] {
            assert!(
                segment(&bad, &mut p, &mut scratch, |_| {}).is_err(),
                "{bad:?}"
            );
        }
        // A TCP data offset under 5 words cannot be a header.
        let mut short = p.clone();
        short[20 + 12] = 4 << 4;
        assert!(segment(&hdr, &mut short, &mut scratch, |_| {}).is_err());
        hdr.gso_type = GSO_NONE;
        hdr.csum_offset = 60_000;
        assert!(segment(&hdr, &mut p, &mut scratch, |_| {}).is_err());
        assert!(VnetHdr::parse(&[0; 5]).is_err());
    }

    #[test]
    fn the_header_length_comes_from_the_packet_not_from_hdr_len() {
        // On a forwarding path the kernel reports the skb's linear length, payload included.
        for v4 in [true, false] {
            let (hdr, p) = super_packet(v4, 2500, 0x10);
            let mut expected = Vec::new();
            let mut scratch = vec![0u8; 65_536];
            segment(&hdr, &mut p.clone(), &mut scratch, |s| {
                expected.push(s.to_vec())
            })
            .unwrap();
            let lying = VnetHdr {
                hdr_len: hdr.hdr_len + 700,
                ..hdr
            };
            let mut got = Vec::new();
            segment(&lying, &mut p.clone(), &mut scratch, |s| {
                got.push(s.to_vec())
            })
            .unwrap();
            assert_eq!(got, expected);
        }
    }

    /// A UDP GSO packet as the kernel hands it over with USO: one UDP header, the UDP
    /// length and checksum of the whole (checksum partial: the pseudo-header sum).
    fn udp_super_packet(v4: bool, payload: usize, size: u16) -> (VnetHdr, Vec<u8>) {
        let ip_len = if v4 { 20 } else { 40 };
        let (_, tcp) = super_packet(v4, 0, 0);
        let mut p = tcp[..ip_len].to_vec();
        p.resize(ip_len + 8 + payload, 0);
        let total = p.len();
        if v4 {
            p[9] = 17;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        } else {
            p[6] = 17;
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        }
        let u = ip_len;
        p[u..u + 2].copy_from_slice(&443u16.to_be_bytes());
        p[u + 2..u + 4].copy_from_slice(&50000u16.to_be_bytes());
        p[u + 4..u + 6].copy_from_slice(&((total - u) as u16).to_be_bytes());
        for (i, b) in p[u + 8..].iter_mut().enumerate() {
            *b = (i * 13 + 5) as u8;
        }
        let partial = fold(pseudo_header(&p, v4, PROTO_UDP, total - u));
        p[u + 6..u + 8].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: (ip_len + 8) as u16,
            gso_size: size,
            csum_start: ip_len as u16,
            csum_offset: 6,
        };
        (hdr, p)
    }

    #[test]
    fn udp_gso_packets_are_cut_into_datagrams_with_valid_checksums() {
        for v4 in [true, false] {
            let (hdr, mut p) = udp_super_packet(v4, 3 * 1200 + 77, 1200);
            let ip_len = usize::from(hdr.csum_start);
            let payload = p[ip_len + 8..].to_vec();
            let mut scratch = vec![0u8; 65_536];
            let mut dgrams: Vec<Vec<u8>> = Vec::new();
            let n = segment(&hdr, &mut p, &mut scratch, |s| dgrams.push(s.to_vec())).unwrap();
            assert_eq!(n, 4);
            let mut joined = Vec::new();
            for (i, d) in dgrams.iter().enumerate() {
                let l4 = d.len() - ip_len;
                assert_eq!(
                    usize::from(u16::from_be_bytes([d[ip_len + 4], d[ip_len + 5]])),
                    l4
                );
                assert_eq!(
                    fold(sum16(&d[ip_len..], pseudo_header(d, v4, PROTO_UDP, l4))),
                    0xffff,
                    "UDP checksum of datagram {i}"
                );
                if v4 {
                    assert_eq!(fold(sum16(&d[..20], 0)), 0xffff, "IPv4 header checksum");
                    assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), d.len());
                    assert_eq!(u16::from_be_bytes([d[4], d[5]]), 100 + i as u16);
                } else {
                    assert_eq!(usize::from(u16::from_be_bytes([d[4], d[5]])), d.len() - 40);
                }
                assert_eq!(&d[ip_len..ip_len + 4], &p[ip_len..ip_len + 4], "ports");
                joined.extend_from_slice(&d[ip_len + 8..]);
            }
            assert_eq!(dgrams[3].len(), ip_len + 8 + 77);
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn header_round_trips() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 60,
            gso_size: 1380,
            csum_start: 40,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::parse(&h.encode()).unwrap(), h);
    }
}
