//! Opening one DERP connection (tailnet.md §13.3 "Connection setup"): the shared dialer of
//! [`crate::transport`] (proxy, TCP, TLS with SNI and certificate name = the node's host
//! name or the caller's `CertName`, ALPN `http/1.1` only), then the plain `Upgrade: DERP`
//! exchange or the WebSocket handshake with subprotocol `derp`. Also what a dial is told
//! ([`ConnectOptions`]) and how it fails ([`ConnectError`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

use super::client_core::DerpClientError;
use super::http::{self, HttpError};
use super::keys::{ClientInfo, NodePublicKey};
use super::transport::Transport;
use crate::transport::{self as dialer, Stream, TlsOptions, TransportError};

/// Time allowed for TCP connect, the TLS handshake (https) and the HTTP (or WebSocket)
/// upgrade.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerpTransport {
    /// `GET /derp` with `Upgrade: DERP`; switches to WebSocket for good when the server
    /// (or a proxy) answers 4xx, as upstream does.
    Upgrade,
    /// WebSocket with subprotocol `derp` (`derp_force_websockets`).
    WebSocket,
}

/// Options beyond URL, headers and key.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub transport: DerpTransport,
    /// The client-info JSON to present.
    pub info: ClientInfo,
    /// Send note-preferred `0x01` after every (re)connect: this is the home region.
    pub preferred: bool,
    /// Trust for `https`/`wss` URLs; `None` uses [`crate::transport::tls::default_client_config`].
    /// ALPN is always `http/1.1` only, whatever this configuration says.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The name sent as SNI and checked against the certificate instead of the URL's host
    /// (the node's `HostName` when dialing its `IPv4` literal, or its `CertName`).
    pub server_name: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            transport: DerpTransport::Upgrade,
            info: ClientInfo::default(),
            preferred: false,
            tls: None,
            server_name: None,
        }
    }
}

/// Failure to establish (or keep) a DERP connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Proxy, TCP, TLS or the WebSocket handshake failed.
    #[error("cannot reach DERP server {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: TransportError,
    },
    #[error("DERP upgrade to {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("DERP upgrade to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("DERP connection to {url} broke: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DERP server {url} closed the connection")]
    Eof { url: String },
    #[error("DERP connection to {url}: a write took longer than {after:?}")]
    WriteTimeout { url: String, after: Duration },
    #[error("DERP connection to {url}: no pong within {after:?} of a probe (stale after a wake?)")]
    Stale { url: String, after: Duration },
    #[error("DERP connection to {url} failed: {source}")]
    Protocol {
        url: String,
        #[source]
        source: DerpClientError,
    },
}

/// An upgraded connection, ready for the client core.
pub(crate) struct Dialed {
    pub(crate) transport: Transport<Stream>,
    /// `Derp-Public-Key` of a plain upgrade's answer.
    pub(crate) server_key: Option<NodePublicKey>,
    /// Bytes read past the upgrade answer (the first DERP frames).
    pub(crate) leftover: Vec<u8>,
}

/// Connects to `url` and upgrades with `options.transport`, sending `headers` (tailnet.md
/// §2).
pub(crate) async fn open(
    url: &Url,
    headers: &[(String, String)],
    options: &ConnectOptions,
) -> Result<Dialed, ConnectError> {
    let transport_err = |source| ConnectError::Transport {
        url: url.to_string(),
        source,
    };
    let tls = TlsOptions {
        config: options.tls.clone(),
        server_name: options.server_name.clone(),
    };
    let io = dialer::connect(url, &tls).await.map_err(transport_err)?;
    match options.transport {
        DerpTransport::Upgrade => {
            let (io, resp, leftover) = upgrade(url, headers, io).await?;
            Ok(Dialed {
                transport: Transport::stream(io),
                server_key: resp.server_key,
                leftover,
            })
        }
        DerpTransport::WebSocket => {
            let req =
                dialer::websocket_request(url, headers, Some("derp")).map_err(transport_err)?;
            let ws = dialer::websocket(req, io, None)
                .await
                .map_err(transport_err)?;
            Ok(Dialed {
                transport: Transport::websocket(ws),
                server_key: None,
                leftover: Vec::new(),
            })
        }
    }
}

/// `GET /derp` with `Upgrade: DERP`; returns the stream, the parsed `101` and whatever was
/// read past it.
async fn upgrade(
    url: &Url,
    headers: &[(String, String)],
    mut io: Stream,
) -> Result<(Stream, http::UpgradeResponse, Vec<u8>), ConnectError> {
    let url_s = url.to_string();
    let http_err = |source| ConnectError::Http {
        url: url_s.clone(),
        source,
    };
    let io_err = |source| ConnectError::Io {
        url: url_s.clone(),
        source,
    };
    let req = http::upgrade_request(url, headers).map_err(http_err)?;
    io.write_all(&req).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = http::head_end(&buf) {
            break end;
        }
        if buf.len() > http::MAX_HEAD_LEN {
            return Err(http_err(HttpError::HeadTooLong));
        }
        if io.read_buf(&mut buf).await.map_err(io_err)? == 0 {
            return Err(ConnectError::Eof { url: url_s.clone() });
        }
    };
    let resp = http::parse_upgrade_response(&buf[..end], &buf[end..]).map_err(http_err)?;
    Ok((io, resp, buf.split_off(end)))
}
