//! Answering DNS inside the tunnel: a query from the device to `[fd60:627a:a42b::53]:53`,
//! over UDP or TCP, is answered from the workspace zone and the answer written straight back
//! to the device; it never reaches a peer. Sans-IO: packets and `now` in, packets out.
//! UDP is answered packet by packet here; TCP goes through [`TcpResponder`].

use std::net::Ipv6Addr;
use std::time::Instant;

use codervpn_dns::{CODER_DNS_ADDR, DEFAULT_UDP_PAYLOAD, Transport, Zone};

use super::dns_tcp::TcpResponder;
use crate::device::checksum::{fold, sum16};

const IPV6_HEADER: usize = 40;
const UDP_HEADER: usize = 8;
const UDP: u8 = 17;
const DNS_PORT: u16 = 53;

/// What [`DnsIntercept::intercept`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intercepted {
    /// Not DNS to the in-tunnel resolver: route it as usual.
    No,
    /// Taken by the resolver: the packets it sends back (a UDP answer; for TCP whatever
    /// segments are due, possibly none) have been emitted.
    Answered,
    /// A UDP query to the resolver that gets no answer (malformed beyond a FORMERR).
    Dropped,
}

/// The in-tunnel resolver's packet side: UDP answers and the TCP responder's connections.
pub struct DnsIntercept {
    tcp: TcpResponder,
    reply: Vec<u8>,
    counters: DnsCounters,
}

/// What the in-tunnel resolver saw (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsCounters {
    /// UDP queries to the resolver.
    pub udp_queries: u64,
    /// UDP answers by response code.
    pub noerror: u64,
    pub nxdomain: u64,
    /// Any other response code (REFUSED, FORMERR, SERVFAIL…).
    pub other_rcode: u64,
    /// UDP queries that got no answer (malformed).
    pub dropped: u64,
    /// TCP segments to the resolver (DNS over TCP).
    pub tcp_segments: u64,
}

impl DnsIntercept {
    pub fn new(now: Instant) -> Self {
        Self::with_tcp(TcpResponder::new(now))
    }

    /// With TCP initial sequence numbers from `seed` (see [`TcpResponder::with_seed`]).
    pub fn with_seed(now: Instant, seed: u64) -> Self {
        Self::with_tcp(TcpResponder::with_seed(now, seed))
    }

    fn with_tcp(tcp: TcpResponder) -> Self {
        Self {
            tcp,
            reply: Vec::with_capacity(2048),
            counters: DnsCounters::default(),
        }
    }

    pub fn counters(&self) -> DnsCounters {
        self.counters
    }

    /// If `packet` is DNS to the in-tunnel resolver (UDP or TCP), answers it from `zone` and
    /// emits the reply packets, addressed back to the asker.
    pub fn intercept(
        &mut self,
        now: Instant,
        packet: &[u8],
        zone: &Zone,
        emit: &mut dyn FnMut(&[u8]),
    ) -> Intercepted {
        if TcpResponder::is_for_resolver(packet) {
            self.counters.tcp_segments += 1;
            self.tcp.handle_segment(now, packet, zone, emit);
            return Intercepted::Answered;
        }
        let Some((src, sport, payload)) = dns_query(packet) else {
            return Intercepted::No;
        };
        self.counters.udp_queries += 1;
        let Some(answer) = zone.answer(
            payload,
            Transport::Udp {
                max_payload: DEFAULT_UDP_PAYLOAD,
            },
        ) else {
            self.counters.dropped += 1;
            return Intercepted::Dropped;
        };
        match answer.get(3).map(|b| b & 0x0f) {
            Some(0) => self.counters.noerror += 1,
            Some(3) => self.counters.nxdomain += 1,
            _ => self.counters.other_rcode += 1,
        }
        build_reply(src, sport, &answer, &mut self.reply);
        emit(&self.reply);
        Intercepted::Answered
    }

    /// Retransmissions and idle timeouts of TCP connections; call on every timer tick.
    pub fn handle_timeout(&mut self, now: Instant, zone: &Zone, emit: &mut dyn FnMut(&[u8])) {
        self.tcp.handle_timeout(now, zone, emit);
    }

    /// TCP connections open or opening.
    pub fn tcp_connections(&self) -> usize {
        self.tcp.connections()
    }
}

/// (source address, source port, UDP payload) of a UDP packet to `[CODER_DNS_ADDR]:53`.
fn dns_query(p: &[u8]) -> Option<(Ipv6Addr, u16, &[u8])> {
    if p.len() < IPV6_HEADER + UDP_HEADER || p[0] >> 4 != 6 || p[6] != UDP {
        return None;
    }
    let dst: [u8; 16] = p[24..40].try_into().ok()?;
    if Ipv6Addr::from(dst) != CODER_DNS_ADDR {
        return None;
    }
    let udp = &p[IPV6_HEADER..];
    if u16::from_be_bytes([udp[2], udp[3]]) != DNS_PORT {
        return None;
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HEADER || udp_len > udp.len() {
        return None;
    }
    let src: [u8; 16] = p[8..24].try_into().ok()?;
    Some((
        Ipv6Addr::from(src),
        u16::from_be_bytes([udp[0], udp[1]]),
        &udp[UDP_HEADER..udp_len],
    ))
}

fn build_reply(to: Ipv6Addr, port: u16, payload: &[u8], out: &mut Vec<u8>) {
    let udp_len = UDP_HEADER + payload.len();
    out.clear();
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(udp_len as u16).to_be_bytes());
    out.extend_from_slice(&[UDP, 64]);
    out.extend_from_slice(&CODER_DNS_ADDR.octets());
    out.extend_from_slice(&to.octets());
    out.extend_from_slice(&DNS_PORT.to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&(udp_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
    let mut sum = sum16(&out[8..40], 0);
    sum += udp_len as u32 + u32::from(UDP);
    let c = !fold(sum16(&out[IPV6_HEADER..], sum));
    // A computed 0 is sent as 0xffff (RFC 768); IPv6 forbids a zero UDP checksum.
    let c = if c == 0 { 0xffff } else { c };
    out[IPV6_HEADER + 6..IPV6_HEADER + 8].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dns_tcp::tests::{query, zone};

    /// A DNS query for `name` (type AAAA) in an IPv6/UDP packet from `[fd60:627a:a42b::1]:5353`.
    fn query_packet(name: &str, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
        let q = query(0x1234, name, 28);
        let udp_len = 8 + q.len();
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[UDP, 64]);
        p.extend_from_slice(&"fd60:627a:a42b::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&5353u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&q);
        p
    }

    /// The packet `intercept` emitted for `packet`, and what it said.
    fn intercept(packet: &[u8], zone: &Zone, out: &mut Vec<u8>) -> Intercepted {
        let mut dns = DnsIntercept::new(Instant::now());
        out.clear();
        dns.intercept(Instant::now(), packet, zone, &mut |p| {
            out.extend_from_slice(p)
        })
    }

    #[test]
    fn a_query_to_the_resolver_is_answered_back_to_the_asker() {
        let mut out = Vec::new();
        let q = query_packet("dev.coder.", CODER_DNS_ADDR, 53);
        assert_eq!(intercept(&q, &zone(), &mut out), Intercepted::Answered);
        assert_eq!(&out[8..24], &CODER_DNS_ADDR.octets(), "from the resolver");
        assert_eq!(&out[24..40], &q[8..24], "to the asker");
        assert_eq!(u16::from_be_bytes([out[40], out[41]]), 53);
        assert_eq!(u16::from_be_bytes([out[42], out[43]]), 5353);
        // UDP checksum verifies.
        let udp_len = out.len() - 40;
        let sum = sum16(&out[8..40], 0) + udp_len as u32 + 17;
        assert_eq!(fold(sum16(&out[40..], sum)), 0xffff);
        // One AAAA answer: fd60:627a:a42b:101::
        let dns = &out[48..];
        assert_eq!(&dns[..2], &[0x12, 0x34]);
        assert_eq!(u16::from_be_bytes([dns[6], dns[7]]), 1, "ANCOUNT");
        assert!(
            out.windows(16)
                .any(|w| w == "fd60:627a:a42b:101::".parse::<Ipv6Addr>().unwrap().octets())
        );
    }

    #[test]
    fn other_traffic_is_not_intercepted() {
        let mut out = Vec::new();
        let other_dst = query_packet("dev.coder.", "fd60:627a:a42b::54".parse().unwrap(), 53);
        assert_eq!(intercept(&other_dst, &zone(), &mut out), Intercepted::No);
        let other_port = query_packet("dev.coder.", CODER_DNS_ADDR, 5353);
        assert_eq!(intercept(&other_port, &zone(), &mut out), Intercepted::No);
        assert_eq!(intercept(&[0x45; 60], &zone(), &mut out), Intercepted::No);
        assert_eq!(intercept(&[], &zone(), &mut out), Intercepted::No);
    }

    #[test]
    fn hostile_udp_lengths_are_not_read_past_the_packet() {
        let mut q = query_packet("dev.coder.", CODER_DNS_ADDR, 53);
        q[44..46].copy_from_slice(&u16::MAX.to_be_bytes());
        let mut out = Vec::new();
        assert_eq!(intercept(&q, &zone(), &mut out), Intercepted::No);
        q[44..46].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(intercept(&q, &zone(), &mut out), Intercepted::No);
    }
}
