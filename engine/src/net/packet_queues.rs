//! A `smoltcp::phy::Device` that is two packet queues: what the stack is to receive, and
//! what it sent. For a stack the caller feeds and drains by hand (the in-tunnel resolver's
//! TCP side, and the far-side stacks of tests). Medium IP: packets are bare IP.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Packets for the stack (`rx`) and from it (`tx`).
#[derive(Debug, Default)]
pub struct PacketQueues {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    /// The largest packet the stack may send; 0 means 1280, the IPv6 minimum.
    pub mtu: usize,
}

impl PacketQueues {
    pub fn new(mtu: usize) -> Self {
        Self {
            mtu,
            ..Self::default()
        }
    }
}

pub struct RxToken(Vec<u8>);
pub struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let r = f(&mut packet);
        self.0.push_back(packet);
        r
    }
}

impl phy::Device for PacketQueues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = if self.mtu == 0 { 1280 } else { self.mtu };
        caps
    }
}
