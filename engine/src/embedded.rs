//! The embedded mode: our engine in-process, driven through the CoderVPN protocol over a
//! socket pair — the same frames a compat tunnel (dylib or daemon) would get. The manager
//! side answers `NetworkSettingsRequest`s through a callback and collects `PeerUpdate`s.
//!
//! Shared by `codervpn up`/`demo` (re-exported as `codervpn_nebridge::embedded`) and the
//! C API (`capi/`), so every host of the engine speaks the same frames.

use std::sync::Arc;

use codervpn_proto::manager::ManagerClient;
use codervpn_proto::vpn::{self, manager_message, tunnel_message};
use codervpn_proto::{Connection, HandshakeError, Incoming, ManagerSide, TunnelSide, VersionList};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::session::BoxFuture;
use crate::session::join::TailnetConnector;
use crate::tunnel::{TunnelExit, TunnelOptions, serve};

mod peer_updates;
pub use peer_updates::{MergedUpdates, PeerUpdates};

/// Applies each network settings request: `Ok` when applied, `Err(reason)` refuses. Runs
/// one request at a time, in order.
pub type SettingsHandler =
    Box<dyn FnMut(&vpn::NetworkSettingsRequest) -> BoxFuture<Result<(), String>> + Send + 'static>;

/// Receives each one-way `Log` message the tunnel sends.
pub type LogHandler = Box<dyn FnMut(vpn::Log) + Send + 'static>;

/// What the manager side does with the tunnel's requests and one-way messages.
pub struct Handlers {
    pub on_settings: SettingsHandler,
    /// `None`: log frames go to our own log at DEBUG.
    pub on_log: Option<LogHandler>,
}

impl Handlers {
    /// Settings through `on_settings`, log frames to our own log.
    pub fn new(on_settings: SettingsHandler) -> Self {
        Self {
            on_settings,
            on_log: None,
        }
    }
}

/// A running embedded tunnel and its manager side.
pub struct Embedded {
    pub client: ManagerClient,
    /// The one-way PeerUpdates the tunnel sent, those not yet read merged into one.
    pub updates: PeerUpdates,
    /// Ends with the tunnel.
    pub tunnel: JoinHandle<TunnelExit>,
}

/// The manager side of any tunnel connection (embedded, compat dylib or daemon).
pub struct Managed {
    pub client: ManagerClient,
    /// The one-way PeerUpdates the tunnel sent, those not yet read merged into one.
    pub updates: PeerUpdates,
}

/// Why the embedded tunnel could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("creating the manager ⇄ tunnel socket pair: {0}")]
    SocketPair(#[source] std::io::Error),
    #[error("CoderVPN handshake with the embedded tunnel: {0}")]
    Handshake(#[source] HandshakeError),
}

/// Starts the engine with `connector` on a socket pair and handshakes as the manager.
pub async fn start(
    connector: TailnetConnector,
    on_settings: SettingsHandler,
) -> Result<Embedded, EmbeddedError> {
    start_with(connector, Handlers::new(on_settings)).await
}

/// [`start`] with every manager-side handler chosen by the caller.
pub async fn start_with(
    connector: TailnetConnector,
    handlers: Handlers,
) -> Result<Embedded, EmbeddedError> {
    let (a, b) = UnixStream::pair().map_err(EmbeddedError::SocketPair)?;
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let tunnel = tokio::spawn(async move {
        match Connection::<TunnelSide>::handshake(br, bw, VersionList::current()).await {
            Ok(conn) => {
                serve(
                    conn,
                    TunnelOptions::new(Arc::new(connector)),
                    std::future::pending(),
                )
                .await
            }
            Err(e) => TunnelExit::ManagerGone(format!("handshake: {e}")),
        }
    });
    let conn = Connection::<ManagerSide>::handshake(ar, aw, VersionList::current())
        .await
        .map_err(EmbeddedError::Handshake)?;
    let m = drive_with(conn, handlers);
    Ok(Embedded {
        client: m.client,
        updates: m.updates,
        tunnel,
    })
}

/// Serves a handshaken tunnel connection as the manager: network settings requests go
/// to `on_settings` (one at a time, in order), PeerUpdates to [`Managed::updates`], log
/// frames to our log at DEBUG.
pub fn drive(conn: Connection<ManagerSide>, on_settings: SettingsHandler) -> Managed {
    drive_with(conn, Handlers::new(on_settings))
}

/// [`drive`] with every manager-side handler chosen by the caller.
pub fn drive_with(conn: Connection<ManagerSide>, handlers: Handlers) -> Managed {
    let Handlers {
        mut on_settings,
        mut on_log,
    } = handlers;
    let (handle, mut incoming) = conn.into_parts();
    let (up_tx, updates) = peer_updates::channel();
    let h = handle.clone();
    tokio::spawn(async move {
        while let Some(m) = incoming.recv().await {
            match m {
                Incoming::Request { id, msg } => {
                    let reply = match msg.msg {
                        Some(tunnel_message::Msg::NetworkSettings(s)) => {
                            let (success, error_message) = match on_settings(&s).await {
                                Ok(()) => (true, String::new()),
                                Err(e) => {
                                    warn!(error = %e, "network settings refused");
                                    (false, e)
                                }
                            };
                            Some(manager_message::Msg::NetworkSettings(
                                vpn::NetworkSettingsResponse {
                                    success,
                                    error_message,
                                },
                            ))
                        }
                        _ => None,
                    };
                    let reply = vpn::ManagerMessage {
                        rpc: None,
                        msg: reply,
                    };
                    if h.reply(id, reply).await.is_err() {
                        return;
                    }
                }
                Incoming::OneWay(msg) => match msg.msg {
                    Some(tunnel_message::Msg::PeerUpdate(u)) => {
                        let _ = up_tx.send(u);
                    }
                    Some(tunnel_message::Msg::Log(l)) => match on_log.as_mut() {
                        Some(f) => f(l),
                        None => debug!(message = %l.message, "tunnel log"),
                    },
                    _ => {}
                },
            }
        }
    });
    Managed {
        client: ManagerClient::new(handle),
        updates,
    }
}
