//! The task that owns the server's [`RelayTable`], and the messages between it and the
//! connection tasks of [`super::server`].

use std::collections::HashMap;
use std::sync::Arc;
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
    pub(super) tx: mpsc::Sender<ToConn>,
}

#[derive(Debug)]
pub(super) enum TableCmd {
    Register {
        key: NodePublicKey,
        conn: ConnId,
        tx: mpsc::Sender<ToConn>,
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
    tx: mpsc::Sender<ToConn>,
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
fn deliver(tx: &mpsc::Sender<ToConn>, msg: ToConn) {
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
