//! The TCP responder against a real TCP client: a second smoltcp stack at
//! `fd60:627a:a42b::1`, packets passed by hand, time passed in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use smoltcp::iface::SocketHandle;

use super::*;
use codervpn_dns::{AgentInfo, ZoneConfig};

const CLIENT: &str = "fd60:627a:a42b::1";
const AAAA: u16 = 28;
const NOERROR: u8 = 0;
const NXDOMAIN: u8 = 3;

pub(crate) fn zone() -> Zone {
    let mut id = [0u8; 16];
    id[6] = 1;
    id[7] = 1;
    Zone::new(
        ZoneConfig::default(),
        &[AgentInfo {
            id,
            name: "main".into(),
            workspace: "dev".into(),
            owner: "testy".into(),
        }],
    )
}

/// A DNS query message (RD set) for `name`, type `qtype`.
pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

fn framed(msgs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        encode_tcp(m, &mut out).unwrap();
    }
    out
}

fn rcode(answer: &[u8]) -> u8 {
    answer[3] & 0x0f
}

/// The responder, a client stack, and the clock both run on.
struct Net {
    dns: TcpResponder,
    zone: Zone,
    now: Instant,
    iface: Interface,
    sockets: SocketSet<'static>,
    phy: PacketQueues,
    /// Segments from the responder, not yet given to the client.
    to_client: Vec<Vec<u8>>,
    /// Drops the next segment the responder sends that carries data.
    drop_next_data: bool,
}

impl Net {
    fn new() -> Self {
        let now = Instant::now();
        let mut phy = PacketQueues::default();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut phy,
            smoltcp::time::Instant::ZERO,
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv6(CLIENT.parse().unwrap()), 64))
                .unwrap();
        });
        Self {
            dns: TcpResponder::new(now),
            zone: zone(),
            now,
            iface,
            sockets: SocketSet::new(Vec::new()),
            phy,
            to_client: Vec::new(),
            drop_next_data: false,
        }
    }

    fn connect(&mut self, port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65_536]),
            tcp::SocketBuffer::new(vec![0; 65_536]),
        );
        s.set_ack_delay(None);
        s.connect(
            self.iface.context(),
            (IpAddress::Ipv6(CODER_DNS_ADDR), 53),
            port,
        )
        .unwrap();
        let h = self.sockets.add(s);
        self.settle();
        h
    }

    fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    fn client_now(&self) -> smoltcp::time::Instant {
        self.dns.at(self.now)
    }

    /// Moves segments both ways until neither side has anything to send.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let t = self.client_now();
            for p in self.to_client.drain(..) {
                self.phy.rx.push_back(p);
                self.iface.poll(t, &mut self.phy, &mut self.sockets);
            }
            self.iface.poll(t, &mut self.phy, &mut self.sockets);
            if self.phy.tx.is_empty() {
                return;
            }
            let mut to_client = Vec::new();
            for p in std::mem::take(&mut self.phy.tx) {
                self.dns.handle_segment(self.now, &p, &self.zone, &mut |r| {
                    to_client.push(r.to_vec())
                });
            }
            self.to_client = self.filter(to_client);
        }
        panic!("the two stacks never settled");
    }

    /// Lets time pass, and runs the responder's timer as the runner's tick would.
    fn advance(&mut self, by: Duration) {
        let tick = Duration::from_millis(250);
        let end = self.now + by;
        while self.now < end {
            self.now = (self.now + tick).min(end);
            let mut out = Vec::new();
            self.dns
                .handle_timeout(self.now, &self.zone, &mut |r| out.push(r.to_vec()));
            self.to_client = self.filter(out);
            self.settle();
        }
    }

    fn filter(&mut self, mut segments: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        if self.drop_next_data {
            // IPv6 payload longer than a bare 20-byte TCP header (+ options of a data-less
            // segment): the first segment with an answer in it.
            if let Some(i) = segments.iter().position(|p| p.len() > 40 + 32) {
                segments.remove(i);
                self.drop_next_data = false;
            }
        }
        segments
    }

    fn send(&mut self, h: SocketHandle, bytes: &[u8]) {
        assert_eq!(self.socket(h).send_slice(bytes).unwrap(), bytes.len());
        self.settle();
    }

    /// The framed answers received on `h` so far.
    fn answers(&mut self, h: SocketHandle) -> Vec<Vec<u8>> {
        let mut bytes = vec![0u8; 65_536];
        let n = self.socket(h).recv_slice(&mut bytes).unwrap_or(0);
        let mut dec = TcpDecoder::new();
        dec.push(&bytes[..n]);
        let mut out = Vec::new();
        while let Some(m) = dec.next_message() {
            out.push(m.to_vec());
        }
        assert_eq!(dec.pending(), 0, "only whole answers");
        out
    }
}

#[test]
fn pipelined_queries_on_one_connection_are_answered_in_order() {
    let mut net = Net::new();
    let c = net.connect(40000);
    assert_eq!(net.socket(c).state(), tcp::State::Established);
    let known = query(1, "Main.Dev.Testy.CODER.", AAAA);
    let unknown = query(2, "nobody.coder.", AAAA);

    net.send(c, &framed(&[&known, &unknown]));

    let answers = net.answers(c);
    assert_eq!(answers.len(), 2);
    assert_eq!(&answers[0][..2], &[0, 1], "first answer first");
    assert_eq!(rcode(&answers[0]), NOERROR);
    assert_eq!(
        &answers[0][12..known.len()],
        &known[12..],
        "the question is echoed as asked, mixed case kept"
    );
    let want: Ipv6Addr = "fd60:627a:a42b:101::".parse().unwrap();
    assert!(answers[0].windows(16).any(|w| w == want.octets()));
    assert_eq!(&answers[1][..2], &[0, 2]);
    assert_eq!(rcode(&answers[1]), NXDOMAIN);
}

#[test]
fn a_query_cut_into_single_byte_segments_is_answered() {
    let mut net = Net::new();
    let c = net.connect(40000);

    for b in framed(&[&query(7, "dev.coder.", AAAA)]) {
        net.send(c, &[b]);
    }

    let answers = net.answers(c);
    assert_eq!(answers.len(), 1);
    assert_eq!(rcode(&answers[0]), NOERROR);
}

#[test]
fn a_lost_answer_is_retransmitted_on_the_timer() {
    let mut net = Net::new();
    let c = net.connect(40000);
    net.drop_next_data = true;

    net.send(c, &framed(&[&query(3, "dev.coder.", AAAA)]));
    assert!(!net.drop_next_data, "the answer was lost once");
    assert!(net.answers(c).is_empty());
    net.advance(Duration::from_secs(3));

    let answers = net.answers(c);
    assert_eq!(answers.len(), 1);
    assert_eq!(&answers[0][..2], &[0, 3]);
}

#[test]
fn connections_beyond_the_cap_are_reset() {
    let mut net = Net::new();
    let open: Vec<_> = (0..MAX_CONNECTIONS as u16)
        .map(|i| net.connect(40000 + i))
        .collect();
    assert!(
        open.iter()
            .all(|&h| net.socket(h).state() == tcp::State::Established)
    );
    assert_eq!(net.dns.connections(), MAX_CONNECTIONS);

    let refused = net.connect(50000);

    assert_eq!(net.socket(refused).state(), tcp::State::Closed, "reset");
    assert_eq!(net.dns.connections(), MAX_CONNECTIONS);
    net.send(open[0], &framed(&[&query(9, "dev.coder.", AAAA)]));
    assert_eq!(net.answers(open[0]).len(), 1, "the open ones still answer");
}

#[test]
fn a_closed_connection_frees_its_slot() {
    let mut net = Net::new();
    let c = net.connect(40000);
    net.send(c, &framed(&[&query(1, "dev.coder.", AAAA)]));

    net.socket(c).close();
    net.settle();

    assert_eq!(net.answers(c).len(), 1);
    assert_eq!(net.dns.connections(), 0);
    assert!(matches!(
        net.socket(c).state(),
        tcp::State::TimeWait | tcp::State::Closed
    ));
}

#[test]
fn an_idle_connection_is_closed_after_the_timeout() {
    let mut net = Net::new();
    let c = net.connect(40000);
    net.send(c, &framed(&[&query(1, "dev.coder.", AAAA)]));
    assert_eq!(net.answers(c).len(), 1);

    net.advance(IDLE_TIMEOUT - Duration::from_secs(1));
    assert_eq!(
        net.socket(c).state(),
        tcp::State::Established,
        "not idle yet"
    );
    net.advance(Duration::from_secs(2));

    assert_eq!(
        net.socket(c).state(),
        tcp::State::CloseWait,
        "the resolver sent FIN"
    );
    net.socket(c).close();
    net.settle();
    assert_eq!(net.dns.connections(), 0);
}

/// Slowloris: a byte every few seconds, never a whole query, does not keep the
/// connection: only answered queries (and answers going out) count as activity.
#[test]
fn a_query_trickled_slower_than_the_timeout_is_cut_off() {
    let mut net = Net::new();
    let c = net.connect(40000);
    let q = framed(&[&query(7, "dev.coder.", AAAA)]);
    for b in &q[..q.len() - 1] {
        net.send(c, &[*b]);
        net.advance(Duration::from_secs(2));
        if net.socket(c).state() != tcp::State::Established {
            break;
        }
    }
    assert!(
        q.len() * 2 > IDLE_TIMEOUT.as_secs() as usize + 2,
        "the trickle outlasts the timeout"
    );
    assert_eq!(
        net.socket(c).state(),
        tcp::State::CloseWait,
        "the resolver sent FIN though bytes kept coming"
    );
}

#[test]
fn an_idle_connection_that_never_closes_is_reset() {
    let mut net = Net::new();
    let c = net.connect(40000);

    net.advance(IDLE_TIMEOUT + Duration::from_secs(1));
    assert_eq!(net.socket(c).state(), tcp::State::CloseWait);
    net.advance(IDLE_TIMEOUT + Duration::from_secs(1));

    assert_eq!(net.dns.connections(), 0);
    assert_eq!(net.socket(c).state(), tcp::State::Closed, "reset");
}

#[test]
fn a_zero_length_message_closes_the_connection_after_earlier_answers() {
    let mut net = Net::new();
    let c = net.connect(40000);

    net.send(c, &framed(&[&query(1, "dev.coder.", AAAA), b""]));

    assert_eq!(net.answers(c).len(), 1);
    assert_eq!(net.socket(c).state(), tcp::State::CloseWait);
}

#[test]
fn a_retransmitted_syn_does_not_open_a_second_connection() {
    let mut net = Net::new();
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 1024]),
        tcp::SocketBuffer::new(vec![0; 1024]),
    );
    s.connect(
        net.iface.context(),
        (IpAddress::Ipv6(CODER_DNS_ADDR), 53),
        40000,
    )
    .unwrap();
    net.sockets.add(s);
    let t = net.client_now();
    net.iface.poll(t, &mut net.phy, &mut net.sockets);
    let syn = net.phy.tx.pop_back().unwrap();

    for _ in 0..3 {
        net.dns
            .handle_segment(net.now, &syn, &net.zone, &mut |_| {});
    }

    assert_eq!(net.dns.connections(), 1);
}

/// A tiny deterministic generator for hostile segments.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// An IPv6/TCP segment to the resolver from `[CLIENT]:port`, checksum correct.
pub(crate) fn segment(port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let tcp_len = 20 + payload.len();
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    p.extend_from_slice(&[TCP, 64]);
    p.extend_from_slice(&CLIENT.parse::<Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&CODER_DNS_ADDR.octets());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&DNS_PORT.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ack.to_be_bytes());
    p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    let sum = crate::device::checksum::sum16(&p[8..40], tcp_len as u32 + u32::from(TCP));
    let c = !crate::device::checksum::fold(crate::device::checksum::sum16(&p[40..], sum));
    p[56..58].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
fn hostile_segments_never_panic_and_never_exceed_the_cap() {
    let mut net = Net::new();
    let honest = net.connect(40000);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut sink = |_: &[u8]| {};
    for i in 0..20_000u32 {
        let r = rng.next();
        let port = 1 + (r % 100) as u16;
        let flags = (r >> 8) as u8;
        let len = ((r >> 16) % 64) as usize;
        let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let mut p = segment(port, (r >> 24) as u32, (r >> 40) as u32, flags, &payload);
        match i % 4 {
            // RST storm on every port, including the honest connection's.
            0 => p = segment(40000, r as u32, 0, 0x04, &[]),
            // Bad checksum.
            1 => p[57] ^= 0xff,
            // Cut short.
            2 => p.truncate(40 + (r % 40) as usize),
            _ => {}
        }
        net.dns.handle_segment(net.now, &p, &net.zone, &mut sink);
        assert!(net.dns.connections() <= MAX_CONNECTIONS);
        if i % 1000 == 0 {
            net.now += Duration::from_millis(300);
            net.dns.handle_timeout(net.now, &net.zone, &mut sink);
        }
    }
    // Hostile lengths on a real connection: a length longer than what follows, then FIN.
    let _ = net.socket(honest).send_slice(&[0xff, 0xff, 1, 2, 3]);
    net.settle();
    net.socket(honest).close();
    net.settle();
    net.advance(IDLE_TIMEOUT * 3);
    assert_eq!(net.dns.connections(), 0, "everything timed out");
}
