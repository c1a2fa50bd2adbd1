//! Failing fast (issue #14): when a peer does not answer, the device gets an ICMPv6
//! "destination unreachable" for the packets sent to it, so a TCP connect fails with
//! `EHOSTUNREACH` (Linux ends a `SYN_SENT` socket on any ICMPv6 error) instead of hanging
//! through its SYN retries for minutes. Upstream's tunnel queues or drops such packets
//! silently. Packets for an address no peer owns are still dropped, not answered: right
//! after a join a name can resolve before the agent's node has made it a peer.
//!
//! `Liveness` tracks one peer: device packets sent, authenticated packets received; a
//! peer is unreachable once it has left us unanswered for [`NO_SESSION_TIMEOUT`] with no
//! session (its first handshake gets no reply), or for [`SESSION_TIMEOUT`] with one.
//! Only handshake responses and data (keepalives included) count as answers: a peer that
//! cannot hear us keeps sending handshake initiations.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

/// Unanswered this long without a session: unreachable (one handshake retry at 5 s).
pub const NO_SESSION_TIMEOUT: Duration = Duration::from_secs(5);
/// Unanswered this long with a session: unreachable. A live peer acknowledges data within
/// 10 s at the latest (WireGuard's passive keepalive), and TCP answers at once.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(12);
/// At most one ICMPv6 error per peer this often.
const ICMP_INTERVAL: Duration = Duration::from_millis(200);
const ICMPV6: u8 = 58;
/// Room for the error in the IPv6 minimum MTU.
const MAX_ERROR: usize = 1280;

/// One peer's answers, for failing fast.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    unanswered_since: Option<Instant>,
    sent: bool,
    received: bool,
    dead: bool,
    pub(super) last_error: Option<Instant>,
}

impl Liveness {
    pub(super) fn sent(&mut self) {
        self.sent = true;
    }

    pub(super) fn received(&mut self) {
        self.received = true;
        self.unanswered_since = None;
        self.dead = false;
    }

    /// Every timer tick: `session` says whether WireGuard holds a current session.
    pub(super) fn tick(&mut self, now: Instant, session: bool) {
        if std::mem::take(&mut self.received) {
            self.unanswered_since = None;
        } else if std::mem::take(&mut self.sent) && self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
        let limit = if session {
            SESSION_TIMEOUT
        } else {
            NO_SESSION_TIMEOUT
        };
        self.dead = self
            .unanswered_since
            .is_some_and(|t| now.saturating_duration_since(t) >= limit);
    }

    pub(super) fn dead(&self) -> bool {
        self.dead
    }
}

/// Whether an error may go out now (rate limit), noting it when so.
pub(super) fn may_answer(last: &mut Option<Instant>, now: Instant) -> bool {
    if last.is_some_and(|t| now.saturating_duration_since(t) < ICMP_INTERVAL) {
        return false;
    }
    *last = Some(now);
    true
}

/// Builds into `out` an ICMPv6 destination unreachable (code 3, address unreachable) for
/// `packet`, from its destination back to its source. `false` (nothing built) for
/// anything but IPv6, for ICMPv6 errors themselves, and for sources an error must not go
/// to (unspecified, multicast).
pub fn icmp6_unreachable(packet: &[u8], out: &mut Vec<u8>) -> bool {
    if packet.len() < 40 || packet[0] >> 4 != 6 {
        return false;
    }
    let src: [u8; 16] = packet[8..24].try_into().unwrap_or_default();
    let dst: [u8; 16] = packet[24..40].try_into().unwrap_or_default();
    let src_ip = Ipv6Addr::from(src);
    if src_ip.is_unspecified() || src_ip.is_multicast() {
        return false;
    }
    // Never an error about an error (types below 128).
    if packet[6] == ICMPV6 && packet.get(40).is_some_and(|t| *t < 128) {
        return false;
    }
    let quoted = &packet[..packet.len().min(MAX_ERROR - 48)];
    let icmp_len = 8 + quoted.len();
    out.clear();
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(icmp_len as u16).to_be_bytes());
    out.push(ICMPV6);
    out.push(64);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&[1, 3, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(quoted);
    let sum = checksum(&dst, &src, &out[40..]);
    out[42..44].copy_from_slice(&sum.to_be_bytes());
    true
}

/// The ICMPv6 checksum over the pseudo-header and `icmp` (the offload code's
/// ones-complement sum).
fn checksum(src: &[u8; 16], dst: &[u8; 16], icmp: &[u8]) -> u16 {
    use crate::device::checksum::{fold, sum16};
    let mut sum = sum16(src, 0);
    sum = sum16(dst, sum);
    sum = sum16(&(icmp.len() as u32).to_be_bytes(), sum);
    sum += u32::from(ICMPV6);
    !fold(sum16(icmp, sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_syn(src: &str, dst: &str) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        p.extend_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&[
            0xc0, 0x01, 0, 22, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        p
    }

    #[test]
    fn the_error_goes_back_to_the_sender_quoting_the_packet_with_a_valid_checksum() {
        let syn = tcp_syn("fd60:627a:a42b::1", "fd60:627a:a42b:1::2");
        let mut out = Vec::new();
        assert!(icmp6_unreachable(&syn, &mut out));
        assert_eq!(out[6], ICMPV6);
        assert_eq!(
            &out[8..24],
            &syn[24..40],
            "from the unreachable destination"
        );
        assert_eq!(&out[24..40], &syn[8..24], "to the sender");
        assert_eq!(
            &out[40..42],
            &[1, 3],
            "destination unreachable, address unreachable"
        );
        assert_eq!(&out[48..], &syn[..]);
        assert_eq!(
            usize::from(u16::from_be_bytes([out[4], out[5]])),
            out.len() - 40
        );
        let src: [u8; 16] = out[8..24].try_into().unwrap();
        let dst: [u8; 16] = out[24..40].try_into().unwrap();
        assert_eq!(checksum(&src, &dst, &out[40..]), 0, "the checksum verifies");
    }

    #[test]
    fn no_error_for_errors_ipv4_or_odd_sources_and_big_packets_are_cut() {
        let mut out = Vec::new();
        let mut err = tcp_syn("fd60::1", "fd60::2");
        err[6] = ICMPV6;
        err[40] = 1;
        assert!(!icmp6_unreachable(&err, &mut out));
        err[40] = 128; // echo request: answered
        assert!(icmp6_unreachable(&err, &mut out));
        assert!(!icmp6_unreachable(&[0x45; 60], &mut out));
        assert!(!icmp6_unreachable(&tcp_syn("::", "fd60::2"), &mut out));
        assert!(!icmp6_unreachable(&tcp_syn("ff02::1", "fd60::2"), &mut out));
        let mut big = tcp_syn("fd60::1", "fd60::2");
        big.resize(9000, 0);
        assert!(icmp6_unreachable(&big, &mut out));
        assert_eq!(out.len(), MAX_ERROR);
    }

    #[test]
    fn a_peer_is_dead_after_5_s_unanswered_without_a_session_12_s_with_one() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut l = Liveness::default();
        l.sent();
        l.tick(at(0), false);
        l.tick(at(4), false);
        assert!(!l.dead());
        l.tick(at(5), false);
        assert!(l.dead());
        l.received();
        assert!(!l.dead(), "an answer revives it at once");
        l.tick(at(6), true);
        l.sent();
        l.tick(at(7), true);
        l.tick(at(18), true);
        assert!(!l.dead());
        l.tick(at(19), true);
        assert!(l.dead());
    }
}
