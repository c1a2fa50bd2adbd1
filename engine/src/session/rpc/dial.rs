//! Dialing the tailnet websocket (tailnet.md §4.1): `GET <base>/api/v2/tailnet?version=2.3
//! [&resume_token=…]` with the caller's headers, through the shared dialer of
//! [`crate::transport`] (the environment's proxy, TCP, rustls with the shared trust or a
//! caller-supplied `rustls::ClientConfig`), then a yamux client session as an
//! [`RpcClient`]. An HTTP error answer to the upgrade is a [`DialError::Http`] with its
//! status and body. Not here: the connect proof (a `403` with
//! `Coder-Connect-Auth-Required` is reported like any other `403`).

use std::io;
use std::sync::Arc;

use tokio_tungstenite::tungstenite;
use url::Url;

use super::client::RpcClient;
use super::keepalive::{KeepAliveConfig, ProbeHandle};
use super::mux::MuxClient;
use super::ws::{WsByteStream, websocket_config};
use crate::transport::{self, TlsOptions, TransportError};

/// The tailnet API version this client speaks (tailnet.md §4.3).
pub const TAILNET_VERSION: &str = "2.3";
/// HTTP statuses that fail the first dial for good (coder/coder
/// `codersdk/workspacesdk/dialer.go` `permanentErrorStatuses`).
pub const PERMANENT_STATUSES: [u16; 6] = [400, 401, 403, 404, 409, 500];
/// Most bytes of an HTTP error body kept in [`DialError::Http`].
const MAX_ERROR_BODY: usize = 4096;

/// What a tailnet dial sends besides the URL.
#[derive(Clone)]
pub struct DialOptions {
    /// Added in order, duplicates kept (`Coder-Session-Token`, `StartRequest.headers`, …).
    pub headers: Vec<(String, String)>,
    /// Sent as `resume_token=` when set (tailnet.md §7).
    pub resume_token: Option<String>,
    /// TLS for `https` base URLs; `None` uses [`default_tls_config`].
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Websocket keep-alive; `None` turns it off. Default: ping after 30 s of quiet, dead
    /// after 10 s more (hashicorp/yamux's defaults).
    pub keepalive: Option<KeepAliveConfig>,
    /// Probes the open websocket on demand (a wake).
    pub probe: Option<ProbeHandle>,
}

impl Default for DialOptions {
    fn default() -> Self {
        Self {
            headers: Vec::new(),
            resume_token: None,
            tls: None,
            keepalive: Some(KeepAliveConfig::default()),
            probe: None,
        }
    }
}

/// The shared trust configuration ([`crate::transport::tls::default_client_config`]: system roots
/// plus `SSL_CERT_FILE`). No ALPN: the websocket upgrade is HTTP/1.1.
pub fn default_tls_config() -> Result<Arc<rustls::ClientConfig>, DialError> {
    crate::transport::tls::default_client_config().map_err(|e| DialError::TlsConfig {
        reason: e.to_string(),
    })
}

impl std::fmt::Debug for DialOptions {
    /// Never shows header values or the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("DialOptions")
            .field("headers", &names)
            .field(
                "resume_token",
                &self.resume_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why the tailnet websocket could not be opened. URLs in messages never carry the query
/// (which may hold the resume token).
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("invalid coder url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot set up TLS: {reason}")]
    TlsConfig { reason: String },
    #[error("TLS handshake with {host} for {url} failed: {source}")]
    Tls {
        host: String,
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error("cannot connect to {addr} for {url}: {source}")]
    Connect {
        addr: String,
        url: String,
        #[source]
        source: io::Error,
    },
    /// The server answered the upgrade with an HTTP error.
    #[error("{url} answered the websocket upgrade with HTTP {status}{}: {body}", if *.permanent { " (permanent)" } else { "" })]
    Http {
        url: String,
        status: u16,
        /// As much of the body as arrived with the headers, at most 4 KiB, lossy UTF-8.
        body: String,
        permanent: bool,
        /// `Coder-Connect-Auth-Required: true` was set (tailnet.md §4.1 connect proof).
        connect_auth_required: bool,
    },
    #[error("websocket handshake with {url} failed: {source}")]
    Handshake {
        url: String,
        #[source]
        source: Box<tungstenite::Error>,
    },
}

impl DialError {
    /// Whether a first dial should give up (tailnet.md §4.1): HTTP 400, 401, 403, 404, 409,
    /// 500, or a request we cannot even build. Everything else is retried with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Http { permanent, .. } => *permanent,
            Self::InvalidUrl { .. } | Self::TlsConfig { .. } | Self::InvalidHeader { .. } => true,
            Self::Connect { .. } | Self::Tls { .. } | Self::Handshake { .. } => false,
        }
    }

    /// The HTTP status of a refused upgrade.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::InvalidUrl { .. }
            | Self::TlsConfig { .. }
            | Self::InvalidHeader { .. }
            | Self::Connect { .. }
            | Self::Tls { .. }
            | Self::Handshake { .. } => None,
        }
    }

    /// A 401 whose validation errors name the field `resume_token`: drop the token and
    /// redial at once (tailnet.md §4.1).
    pub fn is_stale_resume_token(&self) -> bool {
        let Self::Http {
            status: 401, body, ..
        } = self
        else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
            return false;
        };
        v["validations"].as_array().is_some_and(|list| {
            list.iter()
                .any(|item| item["field"].as_str() == Some("resume_token"))
        })
    }
}

/// `<base>/api/v2/tailnet?version=2.3[&resume_token=…]` with `http`→`ws`, `https`→`wss`.
pub fn tailnet_url(base: &Url, resume_token: Option<&str>) -> Result<Url, DialError> {
    let invalid = |reason: &str| DialError::InvalidUrl {
        url: base.as_str().to_owned(),
        reason: reason.to_owned(),
    };
    let scheme = match base.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(invalid("want an http:// or https:// URL")),
    };
    let mut url = base
        .join("/api/v2/tailnet")
        .map_err(|e| invalid(&e.to_string()))?;
    url.set_scheme(scheme)
        .map_err(|()| invalid("cannot change the scheme"))?;
    url.set_fragment(None);
    url.set_query(None);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("version", TAILNET_VERSION);
        if let Some(token) = resume_token {
            q.append_pair("resume_token", token);
        }
    }
    Ok(url)
}

/// Opens the tailnet websocket and a yamux client session on it.
pub async fn dial(base: &Url, opts: &DialOptions) -> Result<RpcClient, DialError> {
    let url = tailnet_url(base, opts.resume_token.as_deref())?;
    let shown = {
        let mut u = url.clone();
        u.set_query(None);
        u.to_string()
    };
    let request = transport::websocket_request(&url, &opts.headers, None)
        .map_err(|e| DialError::from_transport(&shown, e))?;
    let tls = TlsOptions {
        config: opts.tls.clone(),
        server_name: None,
    };
    tracing::debug!(url = %shown, "dialing the tailnet websocket");
    let io = transport::connect(&url, &tls)
        .await
        .map_err(|e| DialError::from_transport(&shown, e))?;
    let ws = transport::websocket(request, io, Some(websocket_config()))
        .await
        .map_err(|e| DialError::from_transport(&shown, e))?;
    let rpc = RpcClient::new(MuxClient::start(
        WsByteStream::with_keepalive(ws, opts.keepalive).with_probe(opts.probe.clone()),
    ));
    tracing::debug!(url = %shown, "tailnet websocket open");
    Ok(rpc)
}

impl DialError {
    /// The dialer's error as this dial reports it: an HTTP answer to the upgrade becomes
    /// [`DialError::Http`] (whose status decides whether to retry).
    fn from_transport(url: &str, e: TransportError) -> Self {
        let url = url.to_owned();
        match e {
            TransportError::BadScheme { scheme } => Self::InvalidUrl {
                url,
                reason: format!("unsupported scheme {scheme:?}"),
            },
            TransportError::NoHost => Self::InvalidUrl {
                url,
                reason: "no host".into(),
            },
            TransportError::Request { source } => Self::InvalidUrl {
                url,
                reason: source.to_string(),
            },
            TransportError::TlsConfig { source } => Self::TlsConfig {
                reason: source.to_string(),
            },
            TransportError::InvalidHeader { name, reason } => Self::InvalidHeader { name, reason },
            TransportError::Connect { addr, source } => Self::Connect { addr, url, source },
            TransportError::Tls { name, source, .. } => Self::Tls {
                host: name,
                url,
                source,
            },
            TransportError::WebSocket { source } => handshake_error(&url, *source),
        }
    }
}

fn handshake_error(url: &str, e: tungstenite::Error) -> DialError {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or_default();
            let body = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]);
            let connect_auth_required = response
                .headers()
                .get("Coder-Connect-Auth-Required")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
            DialError::Http {
                url: url.to_owned(),
                status,
                body: body.trim_end().to_owned(),
                permanent: PERMANENT_STATUSES.contains(&status),
                connect_auth_required,
            }
        }
        other => DialError::Handshake {
            url: url.to_owned(),
            source: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tailnet_url_uses_ws_schemes_and_version_2_3() {
        let base = Url::parse("https://coder.example.com/some/path?x=1#f").unwrap();
        assert_eq!(
            tailnet_url(&base, None).unwrap().as_str(),
            "wss://coder.example.com/api/v2/tailnet?version=2.3"
        );
        let base = Url::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(
            tailnet_url(&base, Some("a b&c")).unwrap().as_str(),
            "ws://127.0.0.1:3000/api/v2/tailnet?version=2.3&resume_token=a+b%26c"
        );
        assert!(tailnet_url(&Url::parse("ftp://x").unwrap(), None).is_err());
    }

    #[test]
    fn permanent_statuses_follow_the_dialer() {
        let http = |status| DialError::Http {
            url: "ws://x/api/v2/tailnet".into(),
            status,
            body: String::new(),
            permanent: PERMANENT_STATUSES.contains(&status),
            connect_auth_required: false,
        };
        for s in [400, 401, 403, 404, 409, 500] {
            assert!(http(s).is_permanent(), "{s}");
        }
        for s in [429, 502, 503, 504] {
            assert!(!http(s).is_permanent(), "{s}");
        }
    }

    #[test]
    fn stale_resume_token_is_a_401_naming_the_field() {
        let err = DialError::Http {
            url: "ws://x/api/v2/tailnet".into(),
            status: 401,
            body: r#"{"message":"Invalid resume token.","validations":[{"field":"resume_token","detail":"expired"}]}"#.into(),
            permanent: true,
            connect_auth_required: false,
        };
        assert!(err.is_stale_resume_token());
        let err = DialError::Http {
            url: "ws://x/api/v2/tailnet".into(),
            status: 401,
            body: r#"{"message":"Unauthorized."}"#.into(),
            permanent: true,
            connect_auth_required: false,
        };
        assert!(!err.is_stale_resume_token());
    }

    #[test]
    fn dial_options_debug_hides_values() {
        let opts = DialOptions {
            headers: vec![("Coder-Session-Token".into(), "secret".into())],
            resume_token: Some("tok".into()),
            ..DialOptions::default()
        };
        let shown = format!("{opts:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("tok\""),
            "{shown}"
        );
    }
}
