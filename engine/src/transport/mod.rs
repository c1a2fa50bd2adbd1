//! The one dialer for every long-lived connection a tunnel makes to a deployment's servers —
//! the tailnet websocket ([`crate::session::rpc::dial`]) and the DERP relays
//! ([`crate::net::derp`]): the environment's HTTP proxy ([`proxy`]) or a direct TCP
//! connection, then TLS for `https`/`wss` ([`tls`]: one trust configuration, ALPN
//! `http/1.1`), then a WebSocket handshake ([`websocket`]). DERP's plain `Upgrade: DERP`
//! exchange is DERP's own bytes and stays with it; it runs over the same [`Stream`].
//!
//! The callers keep their own typed errors (a tailnet dial's HTTP answer decides whether to
//! retry, a DERP dial names the relay); they build them from the one [`TransportError`].

pub mod proxy;
pub mod tls;

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use url::Url;

use self::tls::TlsConfigError;

/// A byte stream a connection runs over: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The stream [`connect`] opens.
pub type Stream = Box<dyn Io>;

/// TLS settings of one dial.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Trust; `None` uses [`tls::default_client_config`]. ALPN is always `http/1.1` only,
    /// whatever this configuration says (both upgrades are HTTP/1.1).
    pub config: Option<Arc<rustls::ClientConfig>>,
    /// The name sent as SNI and checked against the certificate instead of the URL's host
    /// (a DERP node's `HostName` when dialing its IP literal, or its `CertName`).
    pub server_name: Option<String>,
}

/// Why a connection could not be opened. Never carries a URL's query or header values.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("unsupported scheme {scheme:?} (want http, https, ws or wss)")]
    BadScheme { scheme: String },
    #[error("the URL has no host")]
    NoHost,
    #[error("cannot set up TLS: {source}")]
    TlsConfig {
        #[source]
        source: TlsConfigError,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {name} at {addr} failed: {source}")]
    Tls {
        name: String,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error("cannot build the WebSocket request: {source}")]
    Request {
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// The WebSocket handshake failed; an HTTP error answer is `tungstenite::Error::Http`.
    #[error("WebSocket handshake failed: {source}")]
    WebSocket {
        #[source]
        source: Box<tungstenite::Error>,
    },
}

impl TransportError {
    /// Whether retrying cannot help: the URL, headers or TLS setup are wrong, not the
    /// network.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::BadScheme { .. }
            | Self::NoHost
            | Self::TlsConfig { .. }
            | Self::InvalidHeader { .. }
            | Self::Request { .. } => true,
            Self::Connect { .. } | Self::Tls { .. } | Self::WebSocket { .. } => false,
        }
    }
}

/// Whether `scheme` asks for TLS (`https`, `wss`) or not (`http`, `ws`).
pub fn scheme_tls(scheme: &str) -> Result<bool, TransportError> {
    match scheme {
        "http" | "ws" => Ok(false),
        "https" | "wss" => Ok(true),
        other => Err(TransportError::BadScheme {
            scheme: other.to_owned(),
        }),
    }
}

/// TCP to the URL's host and port (the scheme's default when absent) — directly or through
/// the environment's HTTP proxy — then TLS when the scheme asks for it. `TCP_NODELAY` is
/// set: both protocols on top carry small, latency-bound messages.
pub async fn connect(url: &Url, tls_opts: &TlsOptions) -> Result<Stream, TransportError> {
    let tls = scheme_tls(url.scheme())?;
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or(TransportError::NoHost)?
        .trim_matches(['[', ']']);
    let port = url.port().unwrap_or(if tls { 443 } else { 80 });
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let tcp = proxy::connect(url.scheme(), host, port)
        .await
        .map_err(|source| TransportError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(Box::new(tcp));
    }
    let config = match &tls_opts.config {
        Some(c) => c.clone(),
        None => {
            tls::default_client_config().map_err(|source| TransportError::TlsConfig { source })?
        }
    };
    let name = tls_opts.server_name.as_deref().unwrap_or(host).to_owned();
    let server_name = tls::server_name(&name).map_err(|e| TransportError::Tls {
        name: name.clone(),
        addr: addr.clone(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
    })?;
    let stream = tokio_rustls::TlsConnector::from(tls::http1_only(&config))
        .connect(server_name, tcp)
        .await
        .map_err(|source| TransportError::Tls { name, addr, source })?;
    Ok(Box::new(stream))
}

/// The WebSocket request for `url` (`http`→`ws`, `https`→`wss`), with `headers` added in
/// order (duplicates kept) and `Sec-WebSocket-Protocol: <subprotocol>` when given.
pub fn websocket_request(
    url: &Url,
    headers: &[(String, String)],
    subprotocol: Option<&'static str>,
) -> Result<Request, TransportError> {
    let mut ws_url = url.clone();
    let scheme = match url.scheme() {
        "http" => "ws",
        "https" => "wss",
        other => other,
    };
    let _ = ws_url.set_scheme(scheme);
    let mut req = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| TransportError::Request {
            source: Box::new(e),
        })?;
    for (name, value) in headers {
        let invalid = |reason: String| TransportError::InvalidHeader {
            name: name.clone(),
            reason,
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| invalid("the value is not valid in an HTTP header".into()))?;
        req.headers_mut().append(n, v);
    }
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
    }
    Ok(req)
}

/// The WebSocket handshake of `request` over `io`.
pub async fn websocket(
    request: Request,
    io: Stream,
    config: Option<WebSocketConfig>,
) -> Result<WebSocketStream<Stream>, TransportError> {
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(request, io, config)
        .await
        .map_err(|e| TransportError::WebSocket {
            source: Box::new(e),
        })?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert!(!scheme_tls("http").unwrap() && !scheme_tls("ws").unwrap());
        assert!(scheme_tls("https").unwrap() && scheme_tls("wss").unwrap());
        let err = scheme_tls("ftp").unwrap_err();
        assert!(
            err.is_permanent() && err.to_string().contains("ftp"),
            "{err}"
        );
    }

    #[test]
    fn websocket_request_maps_schemes_and_keeps_header_order() {
        let url = Url::parse("https://relay.example/derp?x=1").unwrap();
        let headers = [
            ("X-A".to_owned(), "1".to_owned()),
            ("X-A".to_owned(), "2".to_owned()),
        ];
        let req = websocket_request(&url, &headers, Some("derp")).unwrap();
        assert_eq!(req.uri().to_string(), "wss://relay.example/derp?x=1");
        let values: Vec<_> = req.headers().get_all("X-A").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(req.headers()["Sec-WebSocket-Protocol"], "derp");
    }

    #[test]
    fn bad_header_is_refused_by_name_without_its_value() {
        let url = Url::parse("http://h/").unwrap();
        let headers = [("Coder-Session-Token".to_owned(), "sec\nret".to_owned())];
        let err = websocket_request(&url, &headers, None).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("Coder-Session-Token") && !shown.contains("sec"),
            "{shown}"
        );
        assert!(err.is_permanent());
    }

    #[tokio::test]
    async fn connect_refused_names_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let err = match connect(&url, &TlsOptions::default()).await {
            Ok(_) => panic!("connected to a closed port"),
            Err(e) => e,
        };
        assert!(
            matches!(&err, TransportError::Connect { addr, .. } if *addr == format!("127.0.0.1:{port}")),
            "{err:?}"
        );
        assert!(!err.is_permanent());
    }
}
