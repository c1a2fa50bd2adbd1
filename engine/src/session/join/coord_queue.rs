//! What the owner asks the coordinator, queued for the controller without either waiting on
//! the other: each request is split into its parts and merged with what is still queued —
//! our latest node, the last add or remove per tunnel (a ready-for-handshake after it), a
//! disconnect last. So the queue holds one entry per peer at most, however slow the
//! coordinator's stream, and what reaches the coordinator ends in the same state as sending
//! every request would.

use codervpn_proto::tailnet::CoordinateRequest;
use codervpn_proto::tailnet::coordinate_request::{
    Disconnect, ReadyForHandshake, Tunnel, UpdateSelf,
};

use crate::coalesce::{self, Merge};

/// The owner's end: never waits.
pub type CoordSender = coalesce::Sender<CoordQueue>;
/// The controller's end.
pub type CoordReceiver = coalesce::Receiver<CoordQueue>;

pub fn channel() -> (CoordSender, CoordReceiver) {
    coalesce::channel()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TunnelOp {
    Add,
    Remove,
}

#[derive(Debug)]
struct PendingTunnel {
    id: Vec<u8>,
    op: Option<TunnelOp>,
    ready: bool,
}

/// The requests not yet sent, merged.
#[derive(Debug, Default)]
pub struct CoordQueue {
    update_self: Option<UpdateSelf>,
    /// In first-change order.
    tunnels: Vec<PendingTunnel>,
    disconnect: bool,
    /// The disconnect went out: nothing more is sent.
    done: bool,
}

impl CoordQueue {
    fn tunnel(&mut self, id: Vec<u8>) -> &mut PendingTunnel {
        let i = match self.tunnels.iter().position(|t| t.id == id) {
            Some(i) => i,
            None => {
                self.tunnels.push(PendingTunnel {
                    id,
                    op: None,
                    ready: false,
                });
                self.tunnels.len() - 1
            }
        };
        &mut self.tunnels[i]
    }

    fn set_tunnel(&mut self, id: Vec<u8>, op: TunnelOp) {
        let t = self.tunnel(id);
        t.op = Some(op);
        if op == TunnelOp::Remove {
            // A ready-for-handshake for a tunnel we are closing means nothing.
            t.ready = false;
        }
    }
}

impl Merge for CoordQueue {
    type Item = CoordinateRequest;

    fn push(&mut self, req: CoordinateRequest) {
        if self.disconnect || self.done {
            return;
        }
        if let Some(u) = req.update_self {
            self.update_self = Some(u);
        }
        if let Some(t) = req.add_tunnel {
            self.set_tunnel(t.id, TunnelOp::Add);
        }
        if let Some(t) = req.remove_tunnel {
            self.set_tunnel(t.id, TunnelOp::Remove);
        }
        for r in req.ready_for_handshake {
            self.tunnel(r.id).ready = true;
        }
        if req.disconnect.is_some() {
            self.disconnect = true;
        }
    }

    fn pop(&mut self) -> Option<CoordinateRequest> {
        if self.done {
            return None;
        }
        if let Some(u) = self.update_self.take() {
            return Some(CoordinateRequest {
                update_self: Some(u),
                ..Default::default()
            });
        }
        if let Some(t) = self.tunnels.first_mut() {
            let mut req = CoordinateRequest::default();
            match t.op.take() {
                Some(op) => {
                    let tunnel = Some(Tunnel { id: t.id.clone() });
                    match op {
                        TunnelOp::Add => req.add_tunnel = tunnel,
                        TunnelOp::Remove => req.remove_tunnel = tunnel,
                    }
                    if !t.ready {
                        self.tunnels.remove(0);
                    }
                }
                None => {
                    let t = self.tunnels.remove(0);
                    req.ready_for_handshake = vec![ReadyForHandshake { id: t.id }];
                }
            }
            return Some(req);
        }
        if std::mem::take(&mut self.disconnect) {
            self.done = true;
            return Some(CoordinateRequest {
                disconnect: Some(Disconnect {}),
                ..Default::default()
            });
        }
        None
    }
}

#[cfg(test)]
#[path = "coord_queue_tests.rs"]
mod tests;
