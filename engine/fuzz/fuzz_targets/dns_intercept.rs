//! Fuzzes the in-tunnel resolver's packet side (`DnsIntercept`): UDP queries and TCP
//! connections to `[fd60:627a:a42b::53]:53`, plus raw packets, with the timer in between.
//!
//! Input: a sequence of operations, each an op byte and its operands. `op & 7` picks:
//!   0. SYN from client `(op >> 3) & 3` (ports 40000–40003);
//!   1. data from that client: `[len] ++ len bytes` (bit 5: with FIN), in sequence and
//!      acknowledging all the resolver sent it, so queries reach the zone;
//!   2. FIN;  3. RST;
//!   4. a segment with any flags, sequence and acknowledgement numbers:
//!      `[flags] [seq; 4] [ack; 4] [len] ++ len bytes`;
//!   5. a raw packet `[len] ++ len bytes` (bit 3: its header forced to TCP to the resolver's
//!      port 53, checksum left wrong);
//!   6. a UDP datagram to the resolver: `[len] ++ len bytes`;
//!   7. `[n]`: n × 50 ms pass and the timer runs.
//!
//! Checks: no panic; never more than `MAX_CONNECTIONS` connections; every packet sent back is
//! IPv6 from the resolver, at most 1280 bytes, with a payload length that matches.

#![no_main]

use std::net::Ipv6Addr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use codervpn_dns::{AgentInfo, CODER_DNS_ADDR, Zone, ZoneConfig};
use codervpn_engine::net::dns_intercept::DnsIntercept;
use codervpn_engine::net::dns_tcp::MAX_CONNECTIONS;
use libfuzzer_sys::fuzz_target;

const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 0, 0, 0, 0, 1);
const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

struct Fixture {
    zone: Zone,
    t0: Instant,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut id = [0u8; 16];
        id[6] = 1;
        id[7] = 1;
        let agent = AgentInfo {
            id,
            name: "main".into(),
            workspace: "dev".into(),
            owner: "testy".into(),
        };
        Fixture {
            zone: Zone::new(ZoneConfig::default(), &[agent]),
            t0: Instant::now(),
        }
    })
}

/// One client's view of its connection: what it sends next, and what it has seen.
#[derive(Clone, Copy, Default)]
struct Client {
    next_seq: u32,
    /// The resolver's next sequence number, as far as this client has seen.
    peer_next: u32,
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn u32(&mut self) -> Option<u32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*b))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = usize::from(self.byte()?).min(self.0.len());
        let (b, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(b.to_vec())
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut dns = DnsIntercept::with_seed(f.t0, 0x00d5_5eed);
    let mut now = f.t0;
    let mut clients = [Client::default(); 4];
    let mut input = Input(data);
    let mut sent: Vec<Vec<u8>> = Vec::new();
    while let Some(op) = input.byte() {
        let c = usize::from((op >> 3) & 3);
        let port = 40000 + c as u16;
        let packet = match op & 7 {
            0 => {
                clients[c].next_seq = 1000 * c as u32;
                clients[c].next_seq += 1;
                segment(port, 1000 * c as u32, 0, SYN, &[])
            }
            1 => {
                let Some(payload) = input.bytes() else { break };
                let fin = if op & 0x20 != 0 { FIN } else { 0 };
                let cl = &mut clients[c];
                let p = segment(port, cl.next_seq, cl.peer_next, ACK | PSH | fin, &payload);
                cl.next_seq = cl
                    .next_seq
                    .wrapping_add(payload.len() as u32 + u32::from(fin));
                p
            }
            2 => {
                let cl = &mut clients[c];
                let p = segment(port, cl.next_seq, cl.peer_next, ACK | FIN, &[]);
                cl.next_seq = cl.next_seq.wrapping_add(1);
                p
            }
            3 => segment(port, clients[c].next_seq, 0, RST, &[]),
            4 => {
                let (Some(flags), Some(seq), Some(ack)) = (input.byte(), input.u32(), input.u32())
                else {
                    break;
                };
                let Some(payload) = input.bytes() else { break };
                segment(port, seq, ack, flags, &payload)
            }
            5 => {
                let Some(mut p) = input.bytes() else { break };
                if op & 8 != 0 && p.len() >= 44 {
                    p[0] = 0x60;
                    p[6] = 6;
                    p[24..40].copy_from_slice(&CODER_DNS_ADDR.octets());
                    p[42..44].copy_from_slice(&53u16.to_be_bytes());
                }
                p
            }
            6 => {
                let Some(payload) = input.bytes() else { break };
                datagram(port, &payload)
            }
            _ => {
                let Some(n) = input.byte() else { break };
                now += Duration::from_millis(50 * u64::from(n));
                dns.handle_timeout(now, &f.zone, &mut |p| sent.push(p.to_vec()));
                check_and_learn(&mut sent, &mut clients);
                continue;
            }
        };
        dns.intercept(now, &packet, &f.zone, &mut |p| sent.push(p.to_vec()));
        check_and_learn(&mut sent, &mut clients);
        assert!(dns.tcp_connections() <= MAX_CONNECTIONS);
    }
});

/// Checks what the resolver sent, and lets each client acknowledge it.
fn check_and_learn(sent: &mut Vec<Vec<u8>>, clients: &mut [Client; 4]) {
    for p in sent.drain(..) {
        assert!(
            p.len() >= 40 && p.len() <= 1280,
            "packet of {} bytes",
            p.len()
        );
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
        assert_eq!(&p[8..24], &CODER_DNS_ADDR.octets());
        if p[6] != 6 || p.len() < 60 {
            continue;
        }
        let tcp = &p[40..];
        let port = u16::from_be_bytes([tcp[2], tcp[3]]);
        let Some(cl) = port
            .checked_sub(40000)
            .and_then(|i| clients.get_mut(usize::from(i)))
        else {
            continue;
        };
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let header = usize::from(tcp[12] >> 4) * 4;
        let flags = tcp[13];
        let len = tcp.len().saturating_sub(header) as u32 + u32::from(flags & (SYN | FIN) != 0);
        cl.peer_next = seq.wrapping_add(len);
    }
}

/// An IPv6 packet from `[CLIENT]:port` to `[CODER_DNS_ADDR]:53` with a correct checksum.
fn ipv6(proto: u8, transport: Vec<u8>) -> Vec<u8> {
    let len = transport.len();
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p.extend_from_slice(&[proto, 64]);
    p.extend_from_slice(&CLIENT.octets());
    p.extend_from_slice(&CODER_DNS_ADDR.octets());
    p.extend_from_slice(&transport);
    let at = if proto == 6 { 40 + 16 } else { 40 + 6 };
    let mut sum = len as u32 + u32::from(proto);
    for chunk in p[8..].chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}

fn segment(port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = port.to_be_bytes().to_vec();
    t.extend_from_slice(&53u16.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    ipv6(6, t)
}

fn datagram(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = port.to_be_bytes().to_vec();
    u.extend_from_slice(&53u16.to_be_bytes());
    u.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    ipv6(17, u)
}
