//! What the data plane's core ([`super::plane::Plane`]) has to send, queued for the shell
//! ([`super::runner`]) to pull after each batch: datagrams for the UDP socket, grouped into
//! segmentation-offload batches as they are queued, and packets for the device. Packets for
//! DERP leave at once: a relay send is itself a push onto the connection's queue
//! ([`Relay::send`]), so there is nothing to hold back.

use std::net::SocketAddr;

use tracing::trace;

use super::direct::DiscoSend;
use super::path::Via;
use super::relay::Relay;
use super::traffic::{PathTraffic, Way};
use super::udp_batch::SendBatch;
use super::wg::Emit;

/// The queue between the core and the shell, and the counters of sends that failed.
#[derive(Default)]
pub struct Outbox {
    /// `batches[..used]` hold datagrams, in the order they were queued.
    batches: Vec<SendBatch>,
    used: usize,
    /// Device packets back to back; `tunnel_ends[i]` is where packet `i` ends.
    tunnel: Vec<u8>,
    tunnel_ends: Vec<usize>,
    /// The DERP relays (peers reached through them, and the connections).
    pub relay: Option<Relay>,
    /// WireGuard traffic by path.
    pub traffic: PathTraffic,
    /// Datagrams the UDP socket would not take (send buffer full, unreachable), or DERP
    /// sends with no relays.
    pub udp_send_failed: u64,
    /// Packets the device would not take.
    pub device_write_failed: u64,
}

impl Outbox {
    pub fn new(relay: Option<Relay>) -> Self {
        Self {
            relay,
            ..Self::default()
        }
    }

    /// Routes what WireGuard emitted: to the device queue, the UDP queue or a relay.
    pub fn emit(&mut self, e: Emit<'_>) {
        match e {
            Emit::Network {
                to: Via::Udp(to),
                data,
            } => {
                self.traffic.sent(Way::Udp, data);
                self.push_udp(to, data);
            }
            Emit::Network {
                to: Via::Derp(key),
                data,
            } => match self.relay.as_mut() {
                Some(r) => {
                    self.traffic.sent(Way::Derp, data);
                    r.send(&key, data);
                }
                None => self.udp_send_failed += 1,
            },
            Emit::Tunnel(data) => self.push_tunnel(data),
        }
    }

    /// Sends a sealed disco packet the way it names.
    pub fn send_disco(&mut self, s: DiscoSend) {
        match s.to {
            Via::Udp(to) => self.push_udp(to, &s.packet),
            Via::Derp(key) => match self.relay.as_mut() {
                Some(r) => r.send(&key, &s.packet),
                None => self.udp_send_failed += 1,
            },
        }
    }

    /// Queues one datagram for the UDP socket, joining the last batch when it can.
    pub fn push_udp(&mut self, to: SocketAddr, data: &[u8]) {
        if self.used == 0 || !self.batches[self.used - 1].fits(data, to) {
            if self.used == self.batches.len() {
                self.batches.push(SendBatch::default());
            }
            self.used += 1;
            trace!(%to, batches = self.used, "new UDP batch");
        }
        self.batches[self.used - 1].push(data, to);
    }

    /// Queues one packet for the device.
    pub fn push_tunnel(&mut self, packet: &[u8]) {
        self.tunnel.extend_from_slice(packet);
        self.tunnel_ends.push(self.tunnel.len());
    }

    /// Whether anything waits for the shell.
    pub fn is_empty(&self) -> bool {
        self.used == 0 && self.tunnel_ends.is_empty()
    }

    /// Hands every queued UDP batch, in order, to `send` (which sends and empties it).
    pub fn drain_udp(&mut self, mut send: impl FnMut(&mut SendBatch)) {
        for batch in &mut self.batches[..self.used] {
            send(batch);
        }
        self.used = 0;
    }

    /// Hands every queued device packet, in order, to `write`.
    pub fn drain_tunnel(&mut self, mut write: impl FnMut(&[u8])) {
        let mut start = 0;
        for &end in &self.tunnel_ends {
            write(&self.tunnel[start..end]);
            start = end;
        }
        self.tunnel.clear();
        self.tunnel_ends.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_keep_their_order_and_group_per_destination() {
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:2".parse().unwrap();
        let mut out = Outbox::new(None);
        out.push_udp(a, &[1; 100]);
        out.push_udp(a, &[2; 100]);
        out.push_udp(b, &[3; 100]);
        out.push_udp(a, &[4; 100]);
        let mut batches = Vec::new();
        out.drain_udp(|batch| {
            let firsts: Vec<u8> = batch.datagrams().map(|d| d[0]).collect();
            batches.push((batch.to(), firsts));
            batch.clear();
        });
        assert_eq!(
            batches,
            [
                (Some(a), vec![1, 2]),
                (Some(b), vec![3]),
                (Some(a), vec![4])
            ]
        );
        assert!(out.is_empty());
        out.push_udp(b, &[5; 10]);
        let mut n = 0;
        out.drain_udp(|_| n += 1);
        assert_eq!(n, 1, "batches are reused, not accumulated");
    }

    #[test]
    fn device_packets_come_out_whole_and_in_order() {
        let mut out = Outbox::new(None);
        out.emit(Emit::Tunnel(&[1, 2, 3]));
        out.emit(Emit::Tunnel(&[4]));
        let mut seen = Vec::new();
        out.drain_tunnel(|p| seen.push(p.to_vec()));
        assert_eq!(seen, [vec![1, 2, 3], vec![4]]);
        assert!(out.is_empty());
    }

    #[test]
    fn derp_without_relays_is_counted() {
        let mut out = Outbox::new(None);
        let key = super::super::derp::NodePublicKey::from_bytes([1; 32]);
        out.emit(Emit::Network {
            to: Via::Derp(key),
            data: &[0; 32],
        });
        out.send_disco(DiscoSend {
            to: Via::Derp(key),
            packet: vec![0; 8],
        });
        assert_eq!(out.udp_send_failed, 2);
        assert!(out.is_empty());
    }
}
