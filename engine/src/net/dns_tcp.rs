//! DNS over TCP for the in-tunnel resolver (RFC 7766): TCP segments to
//! `[fd60:627a:a42b::53]:53` are fed to a tiny smoltcp stack that owns only that address, and
//! the queries read from its connections are answered from the zone. Sans-IO: a segment and
//! `now` in, segments out through `emit`; the runner's timer tick drives retransmissions and
//! the idle timeout. No task per connection.
//!
//! Connections are capped at [`MAX_CONNECTIONS`]: a SYN past the cap finds no listening
//! socket and is reset. A connection that answers no query and sends nothing for
//! [`IDLE_TIMEOUT`] is closed (FIN), and reset if it is still not closed [`IDLE_TIMEOUT`]
//! later; bytes coming in without completing a query do not count (slowloris).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use codervpn_dns::tcp::{TcpDecoder, encode_tcp};
use codervpn_dns::{CODER_DNS_ADDR, Transport, Zone};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use tracing::{debug, trace};

use super::packet_queues::PacketQueues;

/// Open connections at most; a SYN beyond this is reset.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that reads no query and sends no answer for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest packet the responder sends (the IPv6 minimum MTU, safe on every tunnel).
const MTU: usize = 1280;
/// Socket buffers: the receive window, and answers in flight.
const RX_BUFFER: usize = 4096;
const TX_BUFFER: usize = 16_384;
/// Framed answers held beyond the send buffer before no more queries are read (the client's
/// window then closes until it reads its answers).
const OUT_LIMIT: usize = 65_536;
const DNS_PORT: u16 = 53;
const TCP: u8 = 6;
const IPV6_HEADER: usize = 40;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The TCP side of the in-tunnel resolver.
pub struct TcpResponder {
    iface: Interface,
    sockets: SocketSet<'static>,
    phy: PacketQueues,
    conns: Vec<Conn>,
    epoch: Instant,
}

struct Conn {
    handle: SocketHandle,
    /// Bytes read from the stream, cut into messages.
    decoder: TcpDecoder,
    /// Framed answers not yet in the socket's send buffer.
    out: Vec<u8>,
    /// When the connection is next closed (FIN) or, once `closing`, reset.
    deadline: Instant,
    /// Closing: a query got no answer, the peer closed, or the connection went idle.
    closing: bool,
}

impl TcpResponder {
    pub fn new(now: Instant) -> Self {
        // Initial sequence numbers: std's per-process random hash keys are random enough.
        Self::with_seed(now, RandomState::new().build_hasher().finish())
    }

    /// With initial sequence numbers from `seed`: the same inputs give the same segments
    /// (tests, fuzzing).
    pub fn with_seed(now: Instant, seed: u64) -> Self {
        let mut phy = PacketQueues::new(MTU);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut phy, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // One address: the capacity is 4, so this cannot fail.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(CODER_DNS_ADDR), 128));
        });
        // Every asker is "off-link" from a /128; with Medium::Ip the gateway is never used.
        let _ = iface.routes_mut().add_default_ipv6_route(CODER_DNS_ADDR);
        Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            phy,
            conns: Vec::new(),
            epoch: now,
        }
    }

    /// Whether `packet` is an IPv6/TCP segment to the resolver's port 53.
    pub fn is_for_resolver(packet: &[u8]) -> bool {
        segment_header(packet).is_some()
    }

    /// Feeds one IPv6/TCP segment to the resolver (see [`TcpResponder::is_for_resolver`]);
    /// answers queries it completes from `zone` and emits the segments to send back.
    pub fn handle_segment(
        &mut self,
        now: Instant,
        packet: &[u8],
        zone: &Zone,
        emit: &mut dyn FnMut(&[u8]),
    ) {
        let Some(header) = segment_header(packet) else {
            return;
        };
        if header.opens() {
            self.listen_for(now, header.from);
        }
        self.phy.rx.push_back(packet.to_vec());
        let t = self.at(now);
        self.iface
            .poll_ingress_single(t, &mut self.phy, &mut self.sockets);
        self.phy.rx.clear();
        self.run(now, zone, emit);
    }

    /// Runs retransmissions and the idle timeout; call on every timer tick.
    pub fn handle_timeout(&mut self, now: Instant, zone: &Zone, emit: &mut dyn FnMut(&[u8])) {
        if self.conns.is_empty() {
            return;
        }
        for conn in &mut self.conns {
            if now < conn.deadline {
                continue;
            }
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            if conn.closing {
                debug!(peer = ?socket.remote_endpoint(), "DNS over TCP: resetting a connection that did not close");
                socket.abort();
            } else {
                debug!(peer = ?socket.remote_endpoint(), "DNS over TCP: closing an idle connection");
                conn.closing = true;
                conn.deadline = now + IDLE_TIMEOUT;
                socket.close();
            }
        }
        self.run(now, zone, emit);
    }

    /// Connections open or opening.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Answers what the sockets hold, sends, and forgets the connections that are over.
    fn run(&mut self, now: Instant, zone: &Zone, emit: &mut dyn FnMut(&[u8])) {
        for conn in &mut self.conns {
            conn.serve(now, self.sockets.get_mut::<tcp::Socket>(conn.handle), zone);
        }
        let t = self.at(now);
        self.iface.poll(t, &mut self.phy, &mut self.sockets);
        // Sending may have made room for answers held back: one more round.
        for conn in &mut self.conns {
            conn.serve(now, self.sockets.get_mut::<tcp::Socket>(conn.handle), zone);
        }
        self.iface.poll(t, &mut self.phy, &mut self.sockets);
        for packet in self.phy.tx.drain(..) {
            emit(&packet);
        }
        let sockets = &mut self.sockets;
        self.conns.retain(|conn| {
            let over = match sockets.get::<tcp::Socket>(conn.handle).state() {
                // A listener that took no SYN, or fell back after a reset: none are kept.
                tcp::State::Listen | tcp::State::Closed | tcp::State::TimeWait => true,
                tcp::State::SynSent
                | tcp::State::SynReceived
                | tcp::State::Established
                | tcp::State::FinWait1
                | tcp::State::FinWait2
                | tcp::State::CloseWait
                | tcp::State::Closing
                | tcp::State::LastAck => false,
            };
            if over {
                sockets.remove(conn.handle);
            }
            !over
        });
    }

    /// Adds a listening socket for a SYN from `from`, unless that connection exists already
    /// (a retransmitted SYN) or the cap is reached (then smoltcp resets the SYN).
    fn listen_for(&mut self, now: Instant, from: IpEndpoint) {
        let known = self
            .conns
            .iter()
            .any(|c| self.sockets.get::<tcp::Socket>(c.handle).remote_endpoint() == Some(from));
        if known {
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            debug!(peer = %from, "DNS over TCP: connection limit reached, resetting");
            return;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
        );
        socket.set_ack_delay(None);
        socket.set_nagle_enabled(false);
        if socket.listen(DNS_PORT).is_err() {
            return;
        }
        let handle = self.sockets.add(socket);
        self.conns.push(Conn {
            handle,
            decoder: TcpDecoder::new(),
            out: Vec::new(),
            deadline: now + IDLE_TIMEOUT,
            closing: false,
        });
    }

    fn at(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }
}

impl Conn {
    /// Reads queries, answers them in order, and moves answers into the send buffer.
    fn serve(&mut self, now: Instant, socket: &mut tcp::Socket<'_>, zone: &Zone) {
        let mut active = false;
        while !self.closing && self.out.len() < OUT_LIMIT && socket.can_recv() {
            let decoder = &mut self.decoder;
            // Bytes in alone are not activity: a query trickled a byte at a time must
            // not hold the connection open forever (slowloris).
            match socket.recv(|bytes| {
                decoder.push(bytes);
                (bytes.len(), bytes.len())
            }) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut drained = false;
        while !self.closing && self.out.len() < OUT_LIMIT {
            let Some(query) = self.decoder.next_message() else {
                drained = true;
                break;
            };
            let answered = zone
                .answer(query, Transport::Tcp)
                .is_some_and(|answer| encode_tcp(&answer, &mut self.out).is_ok());
            if answered {
                active = true;
            } else {
                trace!("DNS over TCP: a query got no answer, closing the connection");
                self.closing = true;
            }
        }
        if !self.out.is_empty() && socket.can_send() {
            let n = socket.send_slice(&self.out).unwrap_or(0);
            self.out.drain(..n);
            active |= n > 0;
        }
        if socket.state() == tcp::State::CloseWait && drained && !socket.can_recv() {
            // The asker is done; what it sent last is all answered.
            self.closing = true;
        }
        if self.closing && self.out.is_empty() {
            socket.close();
        }
        if active && !self.closing {
            self.deadline = now + IDLE_TIMEOUT;
        }
    }
}

/// The fields of a segment to the resolver that decide whether it may open a connection.
struct SegmentHeader {
    from: IpEndpoint,
    flags: u8,
}

impl SegmentHeader {
    /// A SYN without ACK: the first segment of a connection.
    fn opens(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// The header of an IPv6/TCP segment to `[CODER_DNS_ADDR]:53` (no extension headers).
fn segment_header(p: &[u8]) -> Option<SegmentHeader> {
    if p.len() < IPV6_HEADER + 20 || p[0] >> 4 != 6 || p[6] != TCP {
        return None;
    }
    let dst: [u8; 16] = p[24..40].try_into().ok()?;
    let tcp = &p[IPV6_HEADER..];
    if Ipv6Addr::from(dst) != CODER_DNS_ADDR || u16::from_be_bytes([tcp[2], tcp[3]]) != DNS_PORT {
        return None;
    }
    let src: [u8; 16] = p[8..24].try_into().ok()?;
    Some(SegmentHeader {
        from: IpEndpoint::new(
            IpAddress::Ipv6(Ipv6Addr::from(src)),
            u16::from_be_bytes([tcp[0], tcp[1]]),
        ),
        flags: tcp[13],
    })
}

#[cfg(test)]
#[path = "dns_tcp_tests.rs"]
pub(crate) mod tests;
