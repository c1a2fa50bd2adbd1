//! `/derp`: hands upgraded connections to the DERP relay — `Upgrade: DERP` (Tailscale's
//! plain upgrade) or a WebSocket with subprotocol `derp`.

use axum::body::Body;
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

pub(crate) async fn upgrade(State(state): State<AppState>, mut req: Request) -> Response {
    let derp = state.derp.current();
    let server_key = derp.public_key().to_hex();
    if header_has(&req, header::UPGRADE, "derp") {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(up) => {
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
    server: std::sync::Arc<std::sync::RwLock<codervpn_engine::net::derp::DerpServer>>,
}

impl DerpSlot {
    pub(crate) fn new(server: codervpn_engine::net::derp::DerpServer) -> Self {
        Self {
            server: std::sync::Arc::new(std::sync::RwLock::new(server)),
        }
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
