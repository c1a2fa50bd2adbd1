//! The HTTP surface: routes, the request log, token checks and the REST handlers.

use super::*;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v2/buildinfo", get(buildinfo))
        .route("/api/v2/users/me", get(users_me))
        .route("/api/v2/workspaceagents/connection", get(connection_info))
        .route("/derp", get(derp::upgrade))
        // coderd answers these without a token: the DERP latency probe clients use when UDP
        // is blocked (netcheck's HTTPS fallback), and the dashboard's.
        .route("/derp/latency-check", get(latency_check))
        .route("/latency-check", get(latency_check))
        .route("/api/v2/tailnet", get(tailnet_upgrade))
        .route("/bin/", get(bin_listing))
        .route("/bin/{*name}", get(bin_file))
        .layer(axum::middleware::from_fn_with_state(
            state.requests.clone(),
            record_request,
        ))
        .with_state(state)
}

/// `200 OK`, empty: coderd's `/derp/latency-check` (its `/latency-check` writes `OK`;
/// clients read neither body).
pub(crate) async fn latency_check() -> StatusCode {
    StatusCode::OK
}

/// One request as the testbed saw it (for tests that check what clients send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub path: String,
    /// The query string, without any `resume_token` value.
    pub query: String,
    /// Header names, lower case, in order (values are not kept: they may be secrets).
    pub header_names: Vec<String>,
}

pub(crate) type RequestLog = Arc<Mutex<Vec<SeenRequest>>>;

async fn record_request(
    State(log): State<RequestLog>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.starts_with("resume_token="))
        .collect::<Vec<_>>()
        .join("&");
    let seen = SeenRequest {
        path: req.uri().path().to_owned(),
        query,
        header_names: req
            .headers()
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect(),
    };
    log.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
    next.run(req).await
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
    let mut body = json!({
        "derp_map": derpmap::to_json(&state.tailnet.derp_map),
        "derp_force_websockets": false,
        "disable_direct_connections": state.disable_direct,
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
    let response = bin::serve(&state.artifacts.borrow().clone(), &name, &headers);
    if response.status() == StatusCode::OK {
        let mut counts = state
            .bodies_served
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *counts.entry(name.replace('_', "-")).or_default() += 1;
    }
    response
}

/// `/api/v2/tailnet?version=2.x`: token, version and websocket checks, then dRPC over yamux
/// over the websocket.
async fn tailnet_upgrade(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    mut req: axum::extract::Request,
) -> Response {
    if let Err(e) = authorize(&state, req.headers()) {
        return e.into_response();
    }
    if state
        .tailnet
        .unavailable
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return coder_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The tailnet coordinator is unavailable.",
            "testbed fault: set_tailnet_unavailable",
        );
    }
    let version = query.get("version").map(String::as_str).unwrap_or("");
    let supported = version
        .strip_prefix("2.")
        .and_then(|minor| minor.parse::<u32>().ok())
        .is_some_and(|minor| minor <= 3);
    if !supported {
        return coder_error(
            StatusCode::BAD_REQUEST,
            "Unknown or unsupported API version",
            &format!("version {version:?}: this server speaks tailnet API 2.0 to 2.3"),
        );
    }
    let is_ws = req
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req
        .headers()
        .get(axum::http::header::SEC_WEBSOCKET_KEY)
        .cloned()
    else {
        return coder_error(StatusCode::BAD_REQUEST, "Expected a websocket upgrade", "");
    };
    if !is_ws {
        return coder_error(StatusCode::BAD_REQUEST, "Expected a websocket upgrade", "");
    }
    let peer = match query.get("resume_token") {
        Some(token) => match state.tailnet.resume(token) {
            Ok(peer) => peer,
            Err(why) => {
                let detail = match why {
                    tailnet::ResumeError::Unknown => "resume token is not valid",
                    tailnet::ResumeError::Expired => "resume token has expired",
                };
                return (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({
                        "message": "Invalid resume token.",
                        "validations": [{ "field": "resume_token", "detail": detail }],
                    })),
                )
                    .into_response();
            }
        },
        None => Uuid::random(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let router = Arc::new(codervpn_engine::session::rpc::tailnet::router(Arc::new(
        tailnet::TestbedTailnet {
            shared: state.tailnet.clone(),
            peer,
        },
    )));
    let mut dropped = state.drop_tailnet.clone();
    dropped.mark_unchanged();
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else {
            return;
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(up),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(codervpn_engine::session::rpc::ws::websocket_config()),
        )
        .await;
        tokio::select! {
            r = codervpn_engine::session::rpc::ws::serve_websocket(ws, router) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "tailnet connection ended");
                }
            }
            _ = dropped.changed() => tracing::info!(%peer, "tailnet connection dropped (fault)"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::UPGRADE, "websocket")
        .header(axum::http::header::CONNECTION, "Upgrade")
        .header(
            axum::http::header::SEC_WEBSOCKET_ACCEPT,
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
