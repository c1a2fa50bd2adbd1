//! The tunnel role: answers manager requests one at a time, in arrival order
//! (codervpn-protocol.md §6), and runs at most one session.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use codervpn_proto::vpn::{
    self, ManagerMessage, PeerUpdate, StartResponse, StopResponse, TunnelMessage, WakeResponse,
    manager_message, tunnel_message,
};
use codervpn_proto::{Connection, Handle, Incoming, TunnelSide};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::logs;
use crate::session::{Connector, ManagerLink, Session, StartParams};

/// How the tunnel behaves; the defaults are what a manager expects.
#[derive(Clone)]
pub struct TunnelOptions {
    pub connector: Arc<dyn Connector>,
    /// `start` gives up and replies `success=false` after this long (Go waits forever).
    pub start_timeout: Duration,
    /// How long the final `StopResponse` may take to write before the stream is cut.
    pub stop_write_timeout: Duration,
}

impl TunnelOptions {
    pub fn new(connector: Arc<dyn Connector>) -> Self {
        Self {
            connector,
            start_timeout: Duration::from_secs(60),
            stop_write_timeout: Duration::from_secs(5),
        }
    }
}

/// How the tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelExit {
    /// The manager sent `stop`; `StopResponse` was the last frame.
    Stopped,
    /// The manager closed the stream (or it broke) without `stop`.
    ManagerGone(String),
    /// The host asked us to shut down (e.g. SIGTERM).
    Shutdown,
}

/// Runs the tunnel role on an established connection until `stop`, EOF or `shutdown`.
/// Log records emitted inside it are forwarded to the manager as `Log` messages.
pub async fn serve(
    conn: Connection<TunnelSide>,
    opts: TunnelOptions,
    shutdown: impl Future<Output = ()>,
) -> TunnelExit {
    let handle = conn.handle().clone();
    let sink = logs::register(handle.clone());
    let span = info_span!("tunnel", codervpn_tunnel = sink.id());
    let exit = Tunnel {
        handle,
        opts,
        session: None,
    }
    .run(conn, shutdown)
    .instrument(span)
    .await;
    drop(sink);
    exit
}

struct Tunnel {
    handle: Handle<TunnelSide>,
    opts: TunnelOptions,
    session: Option<Box<dyn Session>>,
}

impl Tunnel {
    async fn run(
        mut self,
        conn: Connection<TunnelSide>,
        shutdown: impl Future<Output = ()>,
    ) -> TunnelExit {
        info!(version = %conn.negotiated(), "tunnel running");
        let (_, mut incoming) = conn.into_parts();
        tokio::pin!(shutdown);
        loop {
            let item = tokio::select! {
                item = incoming.recv() => item,
                () = &mut shutdown => {
                    info!("shutdown requested; stopping tunnel");
                    let _ = self.teardown().await;
                    self.handle.close();
                    return TunnelExit::Shutdown;
                }
            };
            let Some(item) = item else {
                let reason = self.handle.closed().await;
                info!(%reason, "manager connection closed; stopping tunnel");
                let _ = self.teardown().await;
                return TunnelExit::ManagerGone(reason.to_string());
            };
            match item {
                Incoming::OneWay(msg) => {
                    error!(
                        critical = true,
                        kind = codervpn_proto::side::manager_kind(&msg),
                        "unknown request (no rpc)"
                    );
                }
                Incoming::Request { id, msg } => {
                    if let Some(exit) = self.handle_request(id, msg).await {
                        return exit;
                    }
                }
            }
        }
    }

    async fn handle_request(&mut self, id: u64, msg: ManagerMessage) -> Option<TunnelExit> {
        let reply = match msg.msg {
            Some(manager_message::Msg::Start(req)) => {
                tunnel_message::Msg::Start(self.start(&req).await)
            }
            Some(manager_message::Msg::Stop(_)) => return Some(self.stop(id).await),
            Some(manager_message::Msg::GetPeerUpdate(_)) => {
                let update = match &self.session {
                    Some(s) => s.peer_snapshot(),
                    None => PeerUpdate::default(),
                };
                tunnel_message::Msg::PeerUpdate(update)
            }
            Some(manager_message::Msg::Wake(_)) => tunnel_message::Msg::Wake(self.wake()),
            Some(manager_message::Msg::NetworkSettings(_)) | None => {
                warn!(
                    id,
                    kind = codervpn_proto::side::manager_kind(&msg),
                    "unhandled manager request"
                );
                send_reply(&self.handle, id, None).await;
                return None;
            }
        };
        send_reply(&self.handle, id, Some(reply)).await;
        None
    }

    async fn start(&mut self, req: &vpn::StartRequest) -> StartResponse {
        if self.session.is_some() {
            warn!("asked to start tunnel, but tunnel is already running");
            return StartResponse {
                success: true,
                error_message: String::new(),
            };
        }
        let params = match StartParams::from_request(req) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "start refused");
                return failed(e.to_string());
            }
        };
        info!(url = %params.coder_url, tunnel_fd = params.tunnel_fd, headers = params.headers.len(), "starting tunnel");
        let link = ManagerLink::new(self.handle.clone());
        let connect = self.opts.connector.connect(params, link);
        let timeout = self.opts.start_timeout;
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, connect) => match r {
                Ok(r) => r,
                Err(_) => Err(format!("gave up after {}s", timeout.as_secs())),
            },
            reason = self.handle.closed() => Err(format!("manager connection closed: {reason}")),
        };
        match result {
            Ok(session) => {
                self.session = Some(session);
                info!("tunnel started");
                StartResponse {
                    success: true,
                    error_message: String::new(),
                }
            }
            Err(e) => {
                let msg = format!("failed to start connection: {e}");
                warn!(error = %msg, "start failed");
                failed(msg)
            }
        }
    }

    /// Answered in every case, as upstream does (its `WakeResponse` has no fields).
    fn wake(&mut self) -> WakeResponse {
        let Some(session) = self.session.as_mut() else {
            debug!("wake before start: nothing to rebind");
            return WakeResponse {};
        };
        if let Err(e) = session.wake() {
            warn!(error = %e, "wake: rebind could not be started");
        }
        WakeResponse {}
    }

    async fn stop(&mut self, id: u64) -> TunnelExit {
        info!("stopping tunnel");
        let result = self.teardown().await;
        let resp = StopResponse {
            success: result.is_ok(),
            error_message: result.err().unwrap_or_default(),
        };
        let reply = TunnelMessage {
            rpc: None,
            msg: Some(tunnel_message::Msg::Stop(resp)),
        };
        let sent = tokio::time::timeout(
            self.opts.stop_write_timeout,
            self.handle.send_final(id, reply),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            // The manager read the reply and hung up before our writer reported back (or
            // left before it): either way nobody is waiting for it any more.
            Ok(Err(codervpn_proto::RpcError::Closed(codervpn_proto::CloseReason::PeerClosed))) => {
                debug!("manager closed the connection around the StopResponse");
            }
            Ok(Err(e)) => warn!(error = %e, "could not send StopResponse"),
            Err(_) => warn!("manager did not read the StopResponse in time; closing"),
        }
        self.handle.close();
        TunnelExit::Stopped
    }

    async fn teardown(&mut self) -> Result<(), String> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        session
            .shutdown()
            .await
            .inspect_err(|e| warn!(error = %e, "session teardown failed"))
    }
}

async fn send_reply(handle: &Handle<TunnelSide>, id: u64, msg: Option<tunnel_message::Msg>) {
    if let Err(e) = handle.reply(id, TunnelMessage { rpc: None, msg }).await {
        warn!(id, error = %e, "could not send reply");
    }
}

fn failed(error_message: String) -> StartResponse {
    StartResponse {
        success: false,
        error_message,
    }
}
