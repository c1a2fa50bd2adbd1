//! The embedded mode: our engine in-process, driven through the CoderVPN protocol over a
//! socket pair — the same frames a compat tunnel (dylib or daemon) would get. The manager
//! side answers `NetworkSettingsRequest`s through a callback and collects `PeerUpdate`s.

use std::sync::Arc;

use anyhow::Context;
use codervpn_engine::session::BoxFuture;
use codervpn_engine::session::join::TailnetConnector;
use codervpn_engine::tunnel::{TunnelExit, TunnelOptions, serve};
use codervpn_proto::manager::ManagerClient;
use codervpn_proto::vpn::{self, manager_message, tunnel_message};
use codervpn_proto::{Connection, Incoming, ManagerSide, TunnelSide, VersionList};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Applies each network settings request: `Ok` when applied, `Err(reason)` refuses. Runs
/// one request at a time, in order.
pub type SettingsHandler =
    Box<dyn FnMut(&vpn::NetworkSettingsRequest) -> BoxFuture<Result<(), String>> + Send + 'static>;

/// A running embedded tunnel and its manager side.
pub struct Embedded {
    pub client: ManagerClient,
    /// Every one-way PeerUpdate the tunnel sent.
    pub updates: mpsc::UnboundedReceiver<vpn::PeerUpdate>,
    /// Ends with the tunnel.
    pub tunnel: JoinHandle<TunnelExit>,
}

/// The manager side of any tunnel connection (embedded, compat dylib or daemon).
pub struct Managed {
    pub client: ManagerClient,
    /// Every one-way PeerUpdate the tunnel sent.
    pub updates: mpsc::UnboundedReceiver<vpn::PeerUpdate>,
}

/// Starts the engine with `connector` on a socket pair and handshakes as the manager.
pub async fn start(
    connector: TailnetConnector,
    on_settings: SettingsHandler,
) -> anyhow::Result<Embedded> {
    let (a, b) = UnixStream::pair().context("creating the manager ⇄ tunnel socket pair")?;
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
        .context("CoderVPN handshake with the embedded tunnel")?;
    let m = drive(conn, on_settings);
    Ok(Embedded {
        client: m.client,
        updates: m.updates,
        tunnel,
    })
}

/// Serves a handshaken tunnel connection as the manager: network settings requests go
/// to `on_settings` (one at a time, in order), PeerUpdates to [`Managed::updates`], log
/// frames to our log at DEBUG.
pub fn drive(conn: Connection<ManagerSide>, mut on_settings: SettingsHandler) -> Managed {
    let (handle, mut incoming) = conn.into_parts();
    let (up_tx, updates) = mpsc::unbounded_channel();
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
                    Some(tunnel_message::Msg::Log(l)) => debug!(message = %l.message, "tunnel log"),
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
