//! Diagnostics of a running `codervpn up` (issue #19): the requests its status socket
//! answers (`status`, `ping`, `metrics`, `bugreport`), and the CLI commands that ask them
//! (`codervpn status --json`, `ping`, `metrics`, `bugreport`) or need no tunnel at all
//! (`codervpn netcheck`).
//!
//! Requests are one JSON line each (`{"request": "ping", "address": "…"}`); every answer is
//! one JSON object with a `kind` (`status`, `pong`, `metrics`, `bugreport` or `error`).

pub mod bugreport;
pub mod cli;
pub mod http;
pub mod logring;
pub mod metrics;
pub mod netcheck;
pub mod statusdoc;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use codervpn_engine::host::PongPath;
use codervpn_engine::host::{Diagnostics, EngineSnapshot};
use serde_json::{Value, json};
use tokio::sync::watch;

use self::logring::LogRing;
use crate::status::{RequestHandler, StatusSnapshot, error_answer};

/// Longest a ping request may wait for its pong.
pub const MAX_PING_TIMEOUT: Duration = Duration::from_secs(30);
/// Secrets shorter than this are not searched for (they would match ordinary text).
const MIN_SECRET_LEN: usize = 6;

/// What `codervpn up` lets its status socket's clients ask about.
pub struct UpDiag {
    /// Our engine's diagnostics; `None` in compat modes (the tunnel is Coder's).
    pub engine: Option<Diagnostics>,
    pub status: watch::Receiver<Arc<StatusSnapshot>>,
    /// The last log lines.
    pub logs: Option<LogRing>,
    /// Every network settings request applied, described (newest last).
    pub settings: Arc<Mutex<Vec<String>>>,
    /// The session token and `--header` values: never sent, replaced by `[redacted]`.
    pub secrets: Vec<String>,
    /// `embedded`, `compat-daemon` or `compat-dylib`.
    pub mode: String,
    /// The deployment, for the netcheck a bug report runs: URL, token, headers.
    pub deployment: Option<Deployment>,
}

/// A deployment to netcheck: URL, session token, headers.
pub type Deployment = (url::Url, String, Vec<(String, String)>);

impl UpDiag {
    /// The status socket's request handler.
    pub fn handler(self: Arc<Self>) -> RequestHandler {
        Arc::new(move |req| {
            let me = self.clone();
            Box::pin(async move { me.answer(req).await })
        })
    }

    /// The tunnel's status now and, with our engine, the engine's snapshot.
    async fn views(&self) -> (Arc<StatusSnapshot>, Option<EngineSnapshot>) {
        let snap = self.status.borrow().clone();
        let engine = match &self.engine {
            Some(e) => e.snapshot().await.ok(),
            None => None,
        };
        (snap, engine)
    }

    fn doc(&self, snap: &StatusSnapshot, engine: Option<&EngineSnapshot>) -> statusdoc::StatusDoc {
        statusdoc::build(snap, engine, &self.mode, SystemTime::now())
    }

    /// `text` without the token, header values or the session's private keys.
    pub fn redact(&self, text: &str) -> String {
        let mut out = redact_secrets(text, &self.secrets);
        if let Some(e) = &self.engine {
            out = e.redact(&out);
        }
        out
    }

    pub async fn answer(&self, req: Value) -> Value {
        match req.get("request").and_then(Value::as_str) {
            Some("status") => {
                let (snap, engine) = self.views().await;
                json!({ "kind": "status", "status": self.doc(&snap, engine.as_ref()) })
            }
            Some("metrics") => {
                let (snap, engine) = self.views().await;
                json!({ "kind": "metrics", "text": metrics::render(&snap, engine.as_ref()) })
            }
            Some("ping") => self.ping(&req).await,
            Some("bugreport") => {
                let files = self.bugreport_files().await;
                let files: Vec<Value> = files
                    .into_iter()
                    .map(|(name, text)| json!({ "name": name, "text": self.redact(&text) }))
                    .collect();
                json!({ "kind": "bugreport", "files": files })
            }
            Some(other) => error_answer(&format!("unknown request {other:?}")),
            None => error_answer("a request is an object with a \"request\" name"),
        }
    }

    async fn ping(&self, req: &Value) -> Value {
        let Some(engine) = &self.engine else {
            return error_answer(
                "ping needs our engine in-process (codervpn up --mode embedded); this tunnel is Coder's",
            );
        };
        let Some(addr) = req
            .get("address")
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<IpAddr>().ok())
        else {
            return error_answer("ping: want an \"address\" (an IP address)");
        };
        let timeout = req
            .get("timeout_ms")
            .and_then(Value::as_u64)
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(5))
            .min(MAX_PING_TIMEOUT);
        match engine.ping(addr, timeout).await {
            Ok(r) => {
                let path = match r.path {
                    PongPath::Direct(a) => statusdoc::PathDoc::Direct {
                        endpoint: Some(a.to_string()),
                    },
                    PongPath::Derp { region } => statusdoc::PathDoc::Derp {
                        region_id: region,
                        region: region.and_then(|id| engine.region_name(id)),
                    },
                };
                json!({
                    "kind": "pong",
                    "address": addr.to_string(),
                    "latency_ms": r.latency.as_secs_f64() * 1e3,
                    "path": path,
                })
            }
            Err(e) => error_answer(&e.to_string()),
        }
    }

    /// The files of a bug report this side knows (not yet redacted).
    async fn bugreport_files(&self) -> Vec<(String, String)> {
        let (snap, engine) = self.views().await;
        let doc = self.doc(&snap, engine.as_ref());
        let mut files = vec![
            (
                "status.json".to_owned(),
                serde_json::to_string_pretty(&doc).unwrap_or_default(),
            ),
            (
                "metrics.txt".to_owned(),
                metrics::render(&snap, engine.as_ref()),
            ),
            ("network.txt".to_owned(), netcheck::describe_session(&doc)),
            (
                "settings.txt".to_owned(),
                self.settings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .join("\n"),
            ),
        ];
        if let Some(l) = &self.logs {
            files.push(("up.log".to_owned(), l.lines().join("\n") + "\n"));
        }
        if let Some((url, token, headers)) = &self.deployment {
            let text = match codervpn_engine::host::probe(url, token, headers, None).await {
                Ok(r) => netcheck::format_probe(&r),
                Err(e) => format!("netcheck failed: {e}\n"),
            };
            files.push(("netcheck.txt".to_owned(), text));
        }
        files
    }
}

/// `text` with every secret of at least 6 characters replaced (shorter ones would match
/// ordinary text).
pub fn redact_secrets(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
        out = out.replace(s.as_str(), "[redacted]");
    }
    out
}
