//! The task that owns the server's [`RelayTable`], and the messages between it and the
//! connection tasks of [`super::server`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use super::frame::PeerGoneReason;
use super::keys::NodePublicKey;
use super::table::{ConnId, RelayTable};

/// A connected client, as the table sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    pub key: NodePublicKey,
    pub conn: ConnId,
    /// Whether this connection carries the key's traffic (the last one registered).
    pub active: bool,
    /// Whether the client said this is its home region.
    pub preferred: bool,
}

/// What the table publishes after every change: key → the active connection's queue.
#[derive(Debug, Default)]
pub(super) struct Routes {
    pub(super) map: HashMap<NodePublicKey, Route>,
}

#[derive(Debug, Clone)]
pub(super) struct Route {
    pub(super) conn: ConnId,
    pub(super) tx: ConnQueue,
}

/// Bytes of relayed packets queued per destination connection; with the server's
/// `PER_CLIENT_QUEUE` packets, the queue's bound. 512 WireGuard-sized packets fit; 64 KiB
/// ones stop at 16.
pub const PER_CLIENT_QUEUE_BYTES: usize = 1 << 20;

/// A connection's queue: bounded in messages (the channel) and in relayed bytes.
#[derive(Debug, Clone)]
pub(super) struct ConnQueue {
    pub(super) tx: mpsc::Sender<ToConn>,
    bytes: Arc<AtomicUsize>,
}

impl ConnQueue {
    pub(super) fn new(tx: mpsc::Sender<ToConn>) -> Self {
        Self {
            tx,
            bytes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Queues a relayed packet unless the queue is full (in packets or in bytes): then
    /// the packet is dropped and the reason given.
    pub(super) fn try_send_packet(
        &self,
        src: NodePublicKey,
        data: Bytes,
    ) -> Result<(), &'static str> {
        let len = data.len();
        if self.bytes.fetch_add(len, Ordering::Relaxed) + len > PER_CLIENT_QUEUE_BYTES {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            return Err("queue full (bytes)");
        }
        self.tx.try_send(ToConn::Packet { src, data }).map_err(|e| {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "gone",
            }
        })
    }

    /// The byte count alone, for the connection that reads the queue: it must hold no
    /// sender, or its queue would not end when the table drops the last one.
    pub(super) fn bytes(&self) -> QueuedBytes {
        QueuedBytes(self.bytes.clone())
    }

    #[cfg(test)]
    fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// A connection queue's byte count, seen from the connection that takes the packets.
#[derive(Debug)]
pub(super) struct QueuedBytes(Arc<AtomicUsize>);

impl QueuedBytes {
    /// The connection took a packet of `len` bytes off the queue.
    pub(super) fn taken(&self, len: usize) {
        self.0.fetch_sub(len, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(super) enum TableCmd {
    Register {
        key: NodePublicKey,
        conn: ConnId,
        tx: ConnQueue,
        done: oneshot::Sender<()>,
    },
    Unregister {
        key: NodePublicKey,
        conn: ConnId,
    },
    NoteSent {
        src: NodePublicKey,
        dst: NodePublicKey,
        dst_conn: ConnId,
    },
    Preferred {
        conn: ConnId,
        preferred: bool,
    },
    Health {
        key: NodePublicKey,
        problem: String,
    },
    Restarting {
        reconnect_in: Duration,
        try_for: Duration,
    },
    Clients {
        reply: oneshot::Sender<Vec<ClientSummary>>,
    },
    Close,
}

#[derive(Debug)]
pub(super) enum ToConn {
    Packet {
        src: NodePublicKey,
        data: Bytes,
    },
    PeerGone {
        key: NodePublicKey,
        reason: PeerGoneReason,
    },
    Health(String),
    Restarting {
        reconnect_in: Duration,
        try_for: Duration,
    },
    Close,
}

struct ConnEntry {
    key: NodePublicKey,
    tx: ConnQueue,
    preferred: bool,
}

/// The one task that owns the relay table.
pub(super) async fn run_table(
    mut rx: mpsc::Receiver<TableCmd>,
    routes: watch::Sender<Arc<Routes>>,
) {
    let mut table = RelayTable::new();
    let mut conns: HashMap<ConnId, ConnEntry> = HashMap::new();
    let publish = |table: &RelayTable, conns: &HashMap<ConnId, ConnEntry>| {
        let map = table
            .active_routes()
            .filter_map(|(key, conn)| {
                conns.get(&conn).map(|e| {
                    (
                        key,
                        Route {
                            conn,
                            tx: e.tx.clone(),
                        },
                    )
                })
            })
            .collect();
        routes.send_replace(Arc::new(Routes { map }));
    };
    while let Some(cmd) = rx.recv().await {
        match cmd {
            TableCmd::Register {
                key,
                conn,
                tx,
                done,
            } => {
                if table.register(key, conn) {
                    debug!(client = %key.short(), conn, "duplicate connection for key; newest is active");
                }
                conns.insert(
                    conn,
                    ConnEntry {
                        key,
                        tx,
                        preferred: false,
                    },
                );
                publish(&table, &conns);
                let _ = done.send(());
            }
            TableCmd::Unregister { key, conn } => {
                conns.remove(&conn);
                let notices = table.unregister(key, conn);
                publish(&table, &conns);
                for n in notices {
                    if let Some(e) = conns.get(&n.to) {
                        deliver(
                            &e.tx,
                            ToConn::PeerGone {
                                key: n.gone,
                                reason: PeerGoneReason::Disconnected,
                            },
                        );
                    }
                }
            }
            TableCmd::NoteSent { src, dst, dst_conn } => table.note_sent(src, dst, dst_conn),
            TableCmd::Preferred { conn, preferred } => {
                if let Some(e) = conns.get_mut(&conn) {
                    e.preferred = preferred;
                }
            }
            TableCmd::Health { key, problem } => {
                for e in conns.values().filter(|e| e.key == key) {
                    deliver(&e.tx, ToConn::Health(problem.clone()));
                }
            }
            TableCmd::Restarting {
                reconnect_in,
                try_for,
            } => {
                for e in conns.values() {
                    deliver(
                        &e.tx,
                        ToConn::Restarting {
                            reconnect_in,
                            try_for,
                        },
                    );
                }
            }
            TableCmd::Clients { reply } => {
                let mut list: Vec<ClientSummary> = conns
                    .iter()
                    .map(|(conn, e)| ClientSummary {
                        key: e.key,
                        conn: *conn,
                        active: table.active(&e.key) == Some(*conn),
                        preferred: e.preferred,
                    })
                    .collect();
                list.sort_by_key(|c| c.conn);
                let _ = reply.send(list);
            }
            TableCmd::Close => {
                for e in conns.values() {
                    deliver(&e.tx, ToConn::Close);
                }
                routes.send_replace(Arc::new(Routes::default()));
                return;
            }
        }
    }
}

/// Control messages must arrive even when the packet queue is full: wait in a side task.
fn deliver(q: &ConnQueue, msg: ToConn) {
    let tx = &q.tx;
    match tx.try_send(msg) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(msg)) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
    }
}

#[cfg(test)]
#[path = "server_table_tests.rs"]
mod tests;
