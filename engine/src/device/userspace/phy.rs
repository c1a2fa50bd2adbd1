//! The smoltcp side of the packet queues: a `smoltcp::phy::Device` whose receive side is
//! the packets the WireGuard runner decrypted, and whose transmit side is the packets the
//! runner will encrypt.
//!
//! Packet buffers circulate instead of being allocated per packet: the stack hands each
//! buffer smoltcp has consumed back to the device (`spares_out`), which fills it with the
//! next packet from the runner; the device hands each buffer it has copied out back to the
//! stack (`spares_in`), which fills it with the next packet smoltcp sends.

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
    /// Consumed receive buffers, back to the device for reuse.
    pub(super) spares_out: mpsc::Sender<Vec<u8>>,
    /// Packets smoltcp sends, for the tunnel.
    pub(super) to_tunnel: mpsc::Sender<Vec<u8>>,
    /// Buffers the device has emptied, to fill with the next packet smoltcp sends.
    pub(super) spares_in: mpsc::Receiver<Vec<u8>>,
    /// Set when smoltcp wanted to send and `to_tunnel` was full: the stack then waits for room.
    pub(super) blocked: bool,
    pub(super) mtu: usize,
}

impl Phy {
    /// Whether a packet is waiting for smoltcp.
    pub(super) fn has_input(&self) -> bool {
        self.pending.is_some() || !self.from_tunnel.is_empty()
    }

    fn tx_token(&mut self) -> Option<TxToken<'_>> {
        if self.to_tunnel.capacity() == 0 {
            self.blocked = true;
            return None;
        }
        Some(TxToken {
            to_tunnel: &self.to_tunnel,
            spares: &mut self.spares_in,
            blocked: &mut self.blocked,
        })
    }
}

impl phy::Device for Phy {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        // A reply (an RST, an echo reply) needs room on the way out too.
        if self.to_tunnel.capacity() == 0 {
            self.blocked = true;
            return None;
        }
        let packet = self
            .pending
            .take()
            .or_else(|| self.from_tunnel.try_recv().ok())?;
        let Phy {
            spares_out,
            to_tunnel,
            spares_in,
            blocked,
            ..
        } = self;
        Some((
            RxToken {
                packet,
                spares: spares_out,
            },
            TxToken {
                to_tunnel,
                spares: spares_in,
                blocked,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.tx_token()
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

pub(super) struct RxToken<'a> {
    packet: Vec<u8>,
    spares: &'a mpsc::Sender<Vec<u8>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        trace!(len = self.packet.len(), "packet into the userspace stack");
        let r = f(&self.packet);
        // If the device has spares enough, this one is simply freed.
        let _ = self.spares.try_send(self.packet);
        r
    }
}

pub(super) struct TxToken<'a> {
    to_tunnel: &'a mpsc::Sender<Vec<u8>>,
    spares: &'a mut mpsc::Receiver<Vec<u8>>,
    blocked: &'a mut bool,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = self.spares.try_recv().unwrap_or_default();
        packet.clear();
        packet.resize(len, 0);
        let r = f(&mut packet);
        trace!(len, "packet out of the userspace stack");
        // `transmit`/`receive` checked for room, and only this task sends on the channel;
        // if the runner is gone the packet has nowhere to go anyway.
        if self.to_tunnel.try_send(packet).is_err() {
            *self.blocked = true;
        }
        r
    }
}
