//! The Internet checksum (RFC 1071): the ones-complement sum of 16-bit big-endian words,
//! and the IPv4/IPv6 pseudo-header that TCP and UDP checksums cover.
//!
//! Every TUN packet crosses it at least once — the kernel leaves TCP and UDP checksums
//! partial when it hands us packets (`TUN_F_CSUM`), segmentation writes one per segment,
//! and UDP coalescing checks each datagram's — so it is summed 4 bytes at a time into a
//! 64-bit accumulator (a loop the compiler vectorises), not word by word. Because
//! 2^16 ≡ 1 (mod 0xffff), a sum of 32-bit words folds to the same 16-bit sum.

/// IP protocol numbers, as the pseudo-header carries them.
pub const PROTO_TCP: u32 = 6;
pub const PROTO_UDP: u32 = 17;

/// Adds `data`'s 16-bit big-endian words (an odd tail byte padded with zero) to `sum` in
/// ones-complement arithmetic. The result is folded to at most 16 bits, so callers may add
/// small values to it before they [`fold`] again.
#[inline]
pub fn sum16(data: &[u8], sum: u32) -> u32 {
    let mut acc = u64::from(sum);
    let mut words = data.chunks_exact(4);
    // 2^32 additions of 32-bit values fit in 64 bits: packets are far shorter.
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    match *words.remainder() {
        [a, b, c] => acc += (u64::from(a) << 24) | (u64::from(b) << 16) | (u64::from(c) << 8),
        [a, b] => acc += (u64::from(a) << 8) | u64::from(b),
        [a] => acc += u64::from(a) << 8,
        _ => {}
    }
    // Fold 64 → 32 → 16 bits with end-around carries.
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    u32::from(fold(acc as u32))
}

/// Folds a 32-bit ones-complement sum to 16 bits.
#[inline]
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The ones-complement sum of the IPv4 or IPv6 pseudo-header for a transport segment of
/// `l4_len` bytes of protocol `proto` (`packet` starts with its IP header).
pub fn pseudo_header(packet: &[u8], v4: bool, proto: u32, l4_len: usize) -> u32 {
    let addrs = if v4 { &packet[12..20] } else { &packet[8..40] };
    sum16(addrs, proto + l4_len as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 word by word, as written in the RFC: the reference.
    fn reference(data: &[u8], mut sum: u64) -> u16 {
        for w in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn matches_the_word_by_word_sum_for_every_length_and_start() {
        let mut x = 0x9e37_79b9u32;
        let data: Vec<u8> = (0..2100)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in (0..300).chain([1199, 1200, 1201, 1420, 2099, 2100]) {
            for start in [0u32, 1, 0xffff, 0x1_2345, 0xffff_0000, u32::MAX] {
                assert_eq!(
                    fold(sum16(&data[..len], start)),
                    reference(&data[..len], u64::from(start)),
                    "len {len} start {start:#x}"
                );
            }
        }
        // All ones: the sum stays all ones, never folds to zero.
        assert_eq!(fold(sum16(&[0xff; 1200], 0)), 0xffff);
        assert_eq!(fold(sum16(&[], 0)), 0);
    }

    #[test]
    fn a_packet_with_its_checksum_sums_to_all_ones() {
        // RFC 1071's example words 0001 f203 f4f5 f6f7: sum ddf2 (checksum 220d).
        let words = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum16(&words, 0)), 0xddf2);
        let mut with = words.to_vec();
        with.extend_from_slice(&(!0xddf2u16).to_be_bytes());
        assert_eq!(fold(sum16(&with, 0)), 0xffff);
    }
}
