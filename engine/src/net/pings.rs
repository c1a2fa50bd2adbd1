//! Pings a user asked for (`codervpn ping`, issue #19): the replies owed, keyed by the disco
//! transaction id, answered as pongs come out of [`DirectPaths::poll_user_pong`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::sync::oneshot;

use super::direct::{DirectPaths, PingRefused};
use super::disco::{TxId, Via};
use super::relay::Relay;

/// The way a pong came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PongPath {
    /// Directly, from this address.
    Direct(SocketAddr),
    /// Through DERP, over our connection to this region (when known).
    Derp { region: Option<i64> },
}

/// A user's ping, answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingReply {
    /// The peer's WireGuard key.
    pub peer: [u8; 32],
    pub latency: Duration,
    pub path: PongPath,
}

/// Why a user's ping got no pong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    #[error("no peer holds the address {0} (yet: its node may still be on its way)")]
    NoPeer(IpAddr),
    #[error("the data plane looks for no direct paths (no disco key)")]
    NoDisco,
    #[error(transparent)]
    Refused(#[from] PingRefused),
    #[error("no pong within {0:?}")]
    Timeout(Duration),
    #[error("the tunnel is not running")]
    NotRunning,
}

/// Where a user's ping's answer goes.
pub type PingReplyTx = oneshot::Sender<Result<PingReply, PingError>>;

/// Replies owed to users.
#[derive(Debug, Default)]
pub struct PendingPings {
    owed: HashMap<TxId, ([u8; 32], PingReplyTx)>,
}

impl PendingPings {
    pub fn insert(&mut self, tx_id: TxId, peer: [u8; 32], reply: PingReplyTx) {
        self.owed.insert(tx_id, (peer, reply));
    }

    /// Answers every pong the direct-path state has for users.
    pub fn answer(&mut self, direct: &mut DirectPaths, relay: Option<&Relay>) {
        while let Some(pong) = direct.poll_user_pong() {
            let Some((peer, reply)) = self.owed.remove(&pong.tx_id) else {
                continue;
            };
            let path = match pong.via {
                Via::Udp(addr) => PongPath::Direct(addr),
                Via::Derp(key) => PongPath::Derp {
                    region: relay.and_then(|r| r.region_of(&key)),
                },
            };
            let _ = reply.send(Ok(PingReply {
                peer,
                latency: pong.latency,
                path,
            }));
        }
    }

    /// Forgets replies nobody waits for any more (the asker gave up).
    pub fn prune(&mut self) {
        self.owed.retain(|_, (_, reply)| !reply.is_closed());
    }
}
