//! `/derp`: hands upgraded connections to the DERP relay — `Upgrade: DERP` (Tailscale's
//! plain upgrade) or a WebSocket with subprotocol `derp`. The same handler serves the
//! main listener's `/derp` and the second region's ([`crate::region`]).

use axum::body::Body;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::debug;

use super::AppState;

fn header_has(req: &Request, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

fn status(code: StatusCode, text: &str) -> Response {
    let mut r = Response::new(Body::from(text.to_owned()));
    *r.status_mut() = code;
    r
}

/// `/derp` on the main listener.
pub(crate) async fn upgrade(State(state): State<AppState>, req: Request) -> Response {
    serve(&state.derp, req)
}

/// `/derp` on a listener of its own (a router whose state is the slot).
pub(crate) async fn upgrade_slot(State(slot): State<DerpSlot>, req: Request) -> Response {
    serve(&slot, req)
}

/// Hands `req`, once upgraded, to the relay in `slot`.
fn serve(slot: &DerpSlot, mut req: Request) -> Response {
    let derp = slot.current();
    let accepted = slot.accepted.clone();
    slot.record_headers(&req);
    let server_key = derp.public_key().to_hex();
    if header_has(&req, header::UPGRADE, "derp") {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(up) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = derp.serve_upgraded(TokioIo::new(up), Bytes::new()).await {
                        debug!(error = %e, "DERP connection ended");
                    }
                }
                Err(e) => debug!(error = %e, "DERP upgrade failed"),
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "DERP")
            .header(header::CONNECTION, "Upgrade")
            .header("Derp-Version", "2")
            .header("Derp-Public-Key", server_key)
            .body(Body::empty())
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "response"));
    }
    let websocket = header_has(&req, header::UPGRADE, "websocket")
        && header_has(&req, header::SEC_WEBSOCKET_PROTOCOL, "derp");
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    match (websocket, key) {
        (true, Some(key)) => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(up) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        let ws =
                            WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None)
                                .await;
                        if let Err(e) = derp.serve_websocket(ws).await {
                            debug!(error = %e, "DERP websocket ended");
                        }
                    }
                    Err(e) => debug!(error = %e, "DERP websocket upgrade failed"),
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::UPGRADE, "websocket")
                .header(header::CONNECTION, "Upgrade")
                .header(
                    header::SEC_WEBSOCKET_ACCEPT,
                    derive_accept_key(key.as_bytes()),
                )
                .header(header::SEC_WEBSOCKET_PROTOCOL, "derp")
                .body(Body::empty())
                .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "response"))
        }
        _ => status(
            StatusCode::UPGRADE_REQUIRED,
            "DERP requires a connection upgrade (Upgrade: DERP, or a WebSocket with subprotocol derp)",
        ),
    }
}

/// The relay behind `/derp`, replaceable (the restart fault) while connections come and go.
#[derive(Clone)]
pub(crate) struct DerpSlot {
    server: Arc<std::sync::RwLock<codervpn_engine::net::derp::DerpServer>>,
    /// Connections upgraded and handed to the relay so far (across restarts).
    accepted: Arc<AtomicU64>,
    /// The header names (lowercase) of every request to `/derp`, in arrival order: what a
    /// relay learns about the client (the token must not reach other origins).
    headers: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
}

impl DerpSlot {
    pub(crate) fn new(server: codervpn_engine::net::derp::DerpServer) -> Self {
        Self {
            server: Arc::new(std::sync::RwLock::new(server)),
            accepted: Arc::default(),
            headers: Arc::default(),
        }
    }

    fn record_headers(&self, req: &Request) {
        let names = req
            .headers()
            .keys()
            .map(|n| n.as_str().to_owned())
            .collect();
        self.headers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(names);
    }

    pub(crate) fn header_names(&self) -> Vec<Vec<String>> {
        self.headers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub(crate) fn current(&self) -> codervpn_engine::net::derp::DerpServer {
        self.server
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the relay with a fresh one under the same key; returns the old one.
    pub(crate) fn replace(
        &self,
        next: codervpn_engine::net::derp::DerpServer,
    ) -> codervpn_engine::net::derp::DerpServer {
        std::mem::replace(
            &mut *self.server.write().unwrap_or_else(|p| p.into_inner()),
            next,
        )
    }
}
