//! codervpn-testbed: a Coder deployment in one process, speaking the real protocols, for
//! tests, benches and `codervpn demo`.
//!
//! Serves, on one HTTP listener: `/api/v2/buildinfo`, `/api/v2/users/me` and
//! `/api/v2/workspaceagents/connection` (session-token auth, 401 otherwise), `/derp` (our DERP
//! relay, plain `Upgrade: DERP` or WebSocket), and `/bin/<file>` (published artifacts).
//! Not yet: the tailnet dRPC endpoint, simulated agents, TLS, faults.

mod bin;
mod derp;
pub mod model;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use bytes::Bytes;
use codervpn_engine::net::derp::{DerpServer, NodePrivateKey};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::info;

pub use bin::{Artifact, Artifacts};
pub use model::{AgentSummary, Deployment, Uuid};

/// The version `/api/v2/buildinfo` reports unless told otherwise.
pub const DEFAULT_VERSION: &str = "v2.24.3";
/// The header that carries the session token.
pub const TOKEN_HEADER: &str = "Coder-Session-Token";
/// The embedded relay's region.
pub const EMBEDDED_REGION_ID: i64 = 999;
pub const EMBEDDED_REGION_NAME: &str = "Coder Embedded Relay";

/// How to start a testbed.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    pub listen: SocketAddr,
    pub workspaces: usize,
    pub agents_per_workspace: usize,
    pub username: String,
    pub hostname_suffix: Option<String>,
    pub version: String,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workspaces: 3,
            agents_per_workspace: 1,
            username: "testy".into(),
            hostname_suffix: None,
            version: DEFAULT_VERSION.into(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    deployment: watch::Receiver<Arc<Deployment>>,
    artifacts: watch::Receiver<Artifacts>,
    derp: DerpServer,
    version: String,
    url: url::Url,
}

/// A running testbed. Dropping it stops the server.
pub struct Testbed {
    url: url::Url,
    deployment: watch::Sender<Arc<Deployment>>,
    artifacts: watch::Sender<Artifacts>,
    derp: DerpServer,
    stop: Option<oneshot::Sender<()>>,
}

/// Why the testbed could not start.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Testbed {
    /// Binds, then serves in the background on the current tokio runtime.
    pub async fn start(config: TestbedConfig) -> Result<Self, TestbedError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| TestbedError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| TestbedError::Listen {
                addr: config.listen,
                source,
            })?;
        let url =
            url::Url::parse(&format!("http://{addr}/")).map_err(|e| TestbedError::Listen {
                addr,
                source: std::io::Error::other(e.to_string()),
            })?;
        let mut deployment = Deployment::generate(
            &config.username,
            config.workspaces,
            config.agents_per_workspace,
        );
        deployment.hostname_suffix = config.hostname_suffix.clone();
        let (dep_tx, dep_rx) = watch::channel(Arc::new(deployment));
        let (art_tx, art_rx) = watch::channel(Artifacts::default());
        let derp = DerpServer::new(NodePrivateKey::generate());
        let state = AppState {
            deployment: dep_rx,
            artifacts: art_rx,
            derp: derp.clone(),
            version: config.version.clone(),
            url: url.clone(),
        };
        let app = router(state);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stop_rx.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "testbed server ended");
            }
        });
        info!(%url, "testbed serving");
        Ok(Self {
            url,
            deployment: dep_tx,
            artifacts: art_tx,
            derp,
            stop: Some(stop_tx),
        })
    }

    /// The deployment's access URL (`http://127.0.0.1:PORT/`).
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    pub fn token(&self) -> String {
        self.deployment.borrow().token.clone()
    }

    pub fn deployment(&self) -> Arc<Deployment> {
        self.deployment.borrow().clone()
    }

    pub fn derp(&self) -> &DerpServer {
        &self.derp
    }

    /// Publishes (or replaces) `/bin/<name>`.
    pub fn publish(&self, name: &str, bytes: impl Into<Bytes>) {
        let artifact = Artifact::new(bytes.into());
        self.artifacts.send_modify(|files| {
            let mut next = (**files).clone();
            next.insert(name.to_owned(), artifact);
            *files = Arc::new(next);
        });
    }

    /// The JSON line `codervpn testbed serve` prints.
    pub fn summary(&self) -> serde_json::Value {
        let d = self.deployment();
        json!({
            "url": self.url.as_str().trim_end_matches('/'),
            "token": d.token,
            "agents": d.agent_summaries(),
        })
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v2/buildinfo", get(buildinfo))
        .route("/api/v2/users/me", get(users_me))
        .route("/api/v2/workspaceagents/connection", get(connection_info))
        .route("/derp", get(derp::upgrade))
        .route("/bin/", get(bin_listing))
        .route("/bin/{*name}", get(bin_file))
        .with_state(state)
}

/// Coder's error body: `{"message": …, "detail": …}`.
fn coder_error(status: StatusCode, message: &str, detail: &str) -> Response {
    (
        status,
        Json(json!({ "message": message, "detail": detail })),
    )
        .into_response()
}

/// Why a request was not authorized.
enum AuthError {
    Missing,
    Invalid,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        match self {
            AuthError::Invalid => coder_error(
                StatusCode::UNAUTHORIZED,
                "Invalid session token.",
                "The Coder-Session-Token header does not match an active session of this testbed.",
            ),
            AuthError::Missing => coder_error(
                StatusCode::UNAUTHORIZED,
                "You must be logged in to access this resource.",
                "Send the session token in the Coder-Session-Token header.",
            ),
        }
    }
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Arc<Deployment>, AuthError> {
    let deployment = state.deployment.borrow().clone();
    match headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        Some(t) if t == deployment.token => Ok(deployment),
        Some(_) => Err(AuthError::Invalid),
        None => Err(AuthError::Missing),
    }
}

async fn buildinfo(State(state): State<AppState>) -> Response {
    Json(json!({
        "external_url": state.url.as_str().trim_end_matches('/'),
        "version": state.version,
        "dashboard_url": state.url.as_str(),
        "workspace_proxy": false,
        "agent_api_version": "2.3",
        "deployment_id": "codervpn-testbed",
    }))
    .into_response()
}

async fn users_me(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match authorize(&state, &headers) {
        Ok(d) => Json(json!({ "id": d.user_id, "username": d.username })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn connection_info(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let d = match authorize(&state, &headers) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let host = state.url.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = state.url.port_or_known_default().unwrap_or(80);
    let mut body = json!({
        "derp_map": {
            "Regions": {
                EMBEDDED_REGION_ID.to_string(): {
                    "EmbeddedRelay": true,
                    "RegionID": EMBEDDED_REGION_ID,
                    "RegionCode": "coder",
                    "RegionName": EMBEDDED_REGION_NAME,
                    "Nodes": [{
                        "Name": format!("{EMBEDDED_REGION_ID}a"),
                        "RegionID": EMBEDDED_REGION_ID,
                        "HostName": host,
                        "DERPPort": port,
                        "STUNPort": -1,
                        "ForceHTTP": state.url.scheme() == "http",
                    }],
                },
            },
        },
        "derp_force_websockets": false,
        "disable_direct_connections": false,
    });
    if let Some(suffix) = &d.hostname_suffix {
        body["hostname_suffix"] = json!(suffix);
    }
    Json(body).into_response()
}

async fn bin_listing(State(state): State<AppState>, headers: HeaderMap) -> Response {
    bin::serve(&state.artifacts.borrow().clone(), "", &headers)
}

async fn bin_file(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    bin::serve(&state.artifacts.borrow().clone(), &name, &headers)
}
