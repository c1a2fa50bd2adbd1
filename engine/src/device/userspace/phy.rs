//! The smoltcp side of the packet queues: a `smoltcp::phy::Device` whose receive side is
//! the packets the WireGuard runner decrypted, and whose transmit side is the packets the
//! runner will encrypt.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use tokio::sync::mpsc;
use tracing::trace;

/// Packet queues between the stack task and the [`UserspaceDevice`](super::UserspaceDevice).
pub(super) struct Phy {
    /// Packets from the tunnel, for smoltcp.
    pub(super) from_tunnel: mpsc::Receiver<Vec<u8>>,
    /// A packet already taken from `from_tunnel` to wake the stack, not yet given to smoltcp.
    pub(super) pending: Option<Vec<u8>>,
    /// Packets smoltcp sends, for the tunnel.
    pub(super) to_tunnel: mpsc::Sender<Vec<u8>>,
    /// Set when smoltcp wanted to send and `to_tunnel` was full: the stack then waits for room.
    pub(super) blocked: bool,
    pub(super) mtu: usize,
}

impl Phy {
    fn next_packet(&mut self) -> Option<Vec<u8>> {
        self.pending
            .take()
            .or_else(|| self.from_tunnel.try_recv().ok())
    }

    /// Whether a packet is waiting for smoltcp.
    pub(super) fn has_input(&self) -> bool {
        self.pending.is_some() || !self.from_tunnel.is_empty()
    }
}

impl phy::Device for Phy {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        // A reply (an RST, an echo reply) needs room on the way out too.
        if self.to_tunnel.capacity() == 0 {
            self.blocked = true;
            return None;
        }
        let packet = self.next_packet()?;
        Some((RxToken(packet), TxToken { phy: self }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.to_tunnel.capacity() == 0 {
            self.blocked = true;
            return None;
        }
        Some(TxToken { phy: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

pub(super) struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        trace!(len = self.0.len(), "packet into the userspace stack");
        f(&self.0)
    }
}

pub(super) struct TxToken<'a> {
    phy: &'a mut Phy,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let r = f(&mut packet);
        trace!(len, "packet out of the userspace stack");
        // `transmit`/`receive` checked for room, and only this task sends on the channel;
        // if the runner is gone the packet has nowhere to go anyway.
        if self.phy.to_tunnel.try_send(packet).is_err() {
            self.phy.blocked = true;
        }
        r
    }
}
