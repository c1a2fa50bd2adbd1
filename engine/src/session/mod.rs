//! Joining a Coder deployment: what the tunnel hands to the control plane on `start`, and
//! what it gets back.

pub mod api;
pub mod diag;
pub mod join;
pub mod node;
pub mod peers;
pub mod probe;
pub mod rpc;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use codervpn_proto::vpn::{
    self, NetworkSettingsRequest, PeerUpdate, TunnelMessage, tunnel_message,
};
use codervpn_proto::{Handle, TunnelSide};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Name of the header that carries Coder Desktop's device telemetry.
pub const TELEMETRY_HEADER: &str = "Coder-Desktop-Telemetry";

/// Everything `start` gave us, validated.
#[derive(Clone)]
pub struct StartParams {
    pub coder_url: url::Url,
    pub api_token: String,
    /// Sent on every HTTP request (REST, websocket, DERP), in order; duplicates allowed.
    /// Includes [`TELEMETRY_HEADER`] when the manager sent device information.
    pub headers: Vec<(String, String)>,
    /// The packet device: a TUN/utun fd owned by the manager, or -1 for userspace.
    pub tunnel_fd: i32,
}

impl fmt::Debug for StartParams {
    /// Never shows the token or header values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("StartParams")
            .field("coder_url", &self.coder_url.as_str())
            .field("api_token", &"<redacted>")
            .field("headers", &names)
            .field("tunnel_fd", &self.tunnel_fd)
            .finish()
    }
}

/// Why `start` was refused before anything was dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("missing coder url")]
    MissingUrl,
    #[error("invalid coder url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("missing api token")]
    MissingToken,
}

impl StartParams {
    /// Validates a `StartRequest` (codervpn-protocol.md §6.1 steps 1–4).
    pub fn from_request(req: &vpn::StartRequest) -> Result<Self, StartError> {
        if req.coder_url.is_empty() {
            return Err(StartError::MissingUrl);
        }
        let invalid = |reason: String| StartError::InvalidUrl {
            url: req.coder_url.clone(),
            reason,
        };
        let coder_url = url::Url::parse(&req.coder_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(coder_url.scheme(), "http" | "https") || !coder_url.has_host() {
            return Err(invalid("want an absolute http:// or https:// URL".into()));
        }
        if req.api_token.is_empty() {
            return Err(StartError::MissingToken);
        }
        let mut headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        if !(req.device_id.is_empty()
            && req.device_os.is_empty()
            && req.coder_desktop_version.is_empty())
        {
            let telemetry = serde_json::json!({
                "device_id": req.device_id,
                "device_os": req.device_os,
                "coder_desktop_version": req.coder_desktop_version,
            });
            headers.push((TELEMETRY_HEADER.to_owned(), telemetry.to_string()));
        }
        Ok(Self {
            coder_url,
            api_token: req.api_token.clone(),
            headers,
            tunnel_fd: req.tunnel_file_descriptor,
        })
    }
}

/// The session's way back to the manager.
#[derive(Clone)]
pub struct ManagerLink {
    handle: Handle<TunnelSide>,
    /// Applies network settings here instead of asking the manager (a daemon that
    /// configures its own interface, as Coder's Linux daemon does).
    local_settings: Option<LocalSettings>,
}

/// Applies a network settings request locally: `Ok` when applied, `Err(reason)` refuses.
pub type LocalSettings =
    std::sync::Arc<dyn Fn(NetworkSettingsRequest) -> BoxFuture<Result<(), String>> + Send + Sync>;

/// A request to the manager that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the manager refused the network settings: {0}")]
    Refused(String),
    #[error("the manager sent an unexpected reply to a network settings request ({0})")]
    UnexpectedReply(&'static str),
    #[error("the manager connection is gone: {0}")]
    Closed(String),
}

impl ManagerLink {
    pub fn new(handle: Handle<TunnelSide>) -> Self {
        Self {
            handle,
            local_settings: None,
        }
    }

    /// This link with network settings applied by `apply` and never sent to the manager.
    pub fn with_local_settings(mut self, apply: LocalSettings) -> Self {
        self.local_settings = Some(apply);
        self
    }

    /// Sends an unsolicited `PeerUpdate` (one-way), waiting for queue space.
    pub async fn peer_update(&self, update: PeerUpdate) -> Result<(), LinkError> {
        let msg = TunnelMessage {
            rpc: None,
            msg: Some(tunnel_message::Msg::PeerUpdate(update)),
        };
        self.handle
            .notify(msg)
            .await
            .map_err(|e| LinkError::Closed(e.to_string()))
    }

    /// Asks the manager to apply `settings`; returns once it answered.
    pub async fn network_settings(
        &self,
        settings: NetworkSettingsRequest,
    ) -> Result<(), LinkError> {
        if let Some(apply) = &self.local_settings {
            return apply(settings).await.map_err(LinkError::Refused);
        }
        let msg = TunnelMessage {
            rpc: None,
            msg: Some(tunnel_message::Msg::NetworkSettings(settings)),
        };
        let reply = self
            .handle
            .request(msg)
            .await
            .map_err(|e| LinkError::Closed(e.to_string()))?;
        match reply.msg {
            Some(vpn::manager_message::Msg::NetworkSettings(r)) if r.success => Ok(()),
            Some(vpn::manager_message::Msg::NetworkSettings(r)) => {
                Err(LinkError::Refused(r.error_message))
            }
            ref other => Err(LinkError::UnexpectedReply(
                codervpn_proto::side::manager_kind(&vpn::ManagerMessage {
                    rpc: None,
                    msg: other.clone(),
                }),
            )),
        }
    }
}

/// A running connection to a Coder deployment.
pub trait Session: Send {
    /// Every known workspace and agent as upserts (the `get_peer_update` reply).
    fn peer_snapshot(&self) -> PeerUpdate;
    /// The system woke up: rebind sockets, re-STUN. Must not wait on the network.
    fn wake(&mut self) -> Result<(), String>;
    /// Tear everything down. Must not wait on the network.
    fn shutdown(self: Box<Self>) -> BoxFuture<Result<(), String>>;
}

/// Opens sessions. The tunnel calls it once per successful `start`.
pub trait Connector: Send + Sync + 'static {
    /// Joins the deployment; resolves once the first tailnet dial succeeded, or with the
    /// reason it failed.
    fn connect(
        &self,
        params: StartParams,
        link: ManagerLink,
    ) -> BoxFuture<Result<Box<dyn Session>, String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> vpn::StartRequest {
        vpn::StartRequest {
            tunnel_file_descriptor: 2,
            coder_url: "https://coder.example.com".into(),
            api_token: "fakeToken".into(),
            headers: vec![vpn::start_request::Header {
                name: "X-Test-Header".into(),
                value: "test".into(),
            }],
            device_id: "device001".into(),
            device_os: "macOS".into(),
            coder_desktop_version: "0.24.8".into(),
        }
    }

    #[test]
    fn start_collects_headers_and_adds_telemetry() {
        let p = StartParams::from_request(&request()).unwrap();
        assert_eq!(p.headers[0], ("X-Test-Header".into(), "test".into()));
        let (name, value) = &p.headers[1];
        assert_eq!(name, TELEMETRY_HEADER);
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(v["device_id"], "device001");
        assert_eq!(v["device_os"], "macOS");
        assert_eq!(v["coder_desktop_version"], "0.24.8");
    }

    #[test]
    fn telemetry_header_is_absent_without_device_information() {
        let mut r = request();
        r.device_id.clear();
        r.device_os.clear();
        r.coder_desktop_version.clear();
        let p = StartParams::from_request(&r).unwrap();
        assert!(p.headers.iter().all(|(n, _)| n != TELEMETRY_HEADER));
    }

    #[test]
    fn telemetry_carries_all_three_keys_when_one_is_set() {
        let mut r = request();
        r.device_id.clear();
        r.coder_desktop_version.clear();
        let p = StartParams::from_request(&r).unwrap();
        let v: serde_json::Value = serde_json::from_str(&p.headers[1].1).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"device_id": "", "device_os": "macOS", "coder_desktop_version": ""})
        );
    }

    // checklist #36
    #[test]
    fn start_requires_url_and_token() {
        let mut r = request();
        r.coder_url.clear();
        assert_eq!(
            StartParams::from_request(&r).unwrap_err().to_string(),
            "missing coder url"
        );
        let mut r = request();
        r.api_token.clear();
        assert_eq!(
            StartParams::from_request(&r).unwrap_err().to_string(),
            "missing api token"
        );
    }

    #[test]
    fn start_rejects_urls_that_are_not_absolute_http() {
        for bad in [
            "coder.example.com",
            "ftp://coder.example.com",
            "https://",
            "::",
        ] {
            let mut r = request();
            r.coder_url = bad.into();
            let err = StartParams::from_request(&r).unwrap_err().to_string();
            assert!(err.starts_with("invalid coder url"), "{bad}: {err}");
        }
    }

    #[test]
    fn debug_output_hides_token_and_header_values() {
        let p = StartParams::from_request(&request()).unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains("fakeToken"), "{shown}");
        assert!(!shown.contains("device001"), "{shown}");
        assert!(shown.contains("X-Test-Header"));
    }
}
