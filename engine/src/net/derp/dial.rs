//! Opening one DERP connection: TCP, TLS for `https`/`wss` (rustls, SNI and certificate name
//! = the node's host name or the caller's `CertName`, ALPN `http/1.1` only), then the plain
//! `Upgrade: DERP` exchange or the WebSocket handshake with subprotocol `derp` (tailnet.md
//! §13.3 "Connection setup").

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use url::Url;

use super::client::{ConnectError, ConnectOptions, DerpTransport};
use super::http::{self, HttpError};
use super::keys::NodePublicKey;
use super::transport::Transport;
use crate::net::tls;

/// A byte stream DERP runs over: plain TCP or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The stream under every DERP transport.
pub(crate) type Stream = Box<dyn Io>;

/// An upgraded connection, ready for the client core.
pub(crate) struct Dialed {
    pub(crate) transport: Transport<Stream>,
    /// `Derp-Public-Key` of a plain upgrade's answer.
    pub(crate) server_key: Option<NodePublicKey>,
    /// Bytes read past the upgrade answer (the first DERP frames).
    pub(crate) leftover: Vec<u8>,
}

/// Connects to `url` and upgrades with `transport`, sending `headers` (tailnet.md §2).
pub(crate) async fn open(
    url: &Url,
    headers: &[(String, String)],
    options: &ConnectOptions,
    transport: DerpTransport,
) -> Result<Dialed, ConnectError> {
    let io = connect(url, options).await?;
    match transport {
        DerpTransport::Upgrade => {
            let (io, resp, leftover) = upgrade(url, headers, io).await?;
            Ok(Dialed {
                transport: Transport::stream(io),
                server_key: resp.server_key,
                leftover,
            })
        }
        DerpTransport::WebSocket => Ok(Dialed {
            transport: Transport::websocket(websocket(url, headers, io).await?),
            server_key: None,
            leftover: Vec::new(),
        }),
    }
}

/// TCP to the URL's host and port (scheme default when absent), then TLS when the scheme
/// asks for it.
async fn connect(url: &Url, options: &ConnectOptions) -> Result<Stream, ConnectError> {
    let url_s = url.to_string();
    let tls = match url.scheme() {
        "http" | "ws" => false,
        "https" | "wss" => true,
        _ => return Err(ConnectError::BadScheme { url: url_s }),
    };
    let Some(host) = url.host_str() else {
        return Err(ConnectError::Http {
            url: url_s.clone(),
            source: HttpError::NoHost { url: url_s },
        });
    };
    let host = host.trim_matches(['[', ']']);
    let port = url.port().unwrap_or(if tls { 443 } else { 80 });
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    // Directly, or through the environment's HTTP proxy.
    let tcp = crate::net::proxy::connect(url.scheme(), host, port)
        .await
        .map_err(|source| ConnectError::Dial {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(Box::new(tcp));
    }
    let config = match &options.tls {
        Some(c) => c.clone(),
        None => {
            tls::default_client_config().map_err(|source| ConnectError::TlsConfig { source })?
        }
    };
    let name = options.server_name.as_deref().unwrap_or(host).to_owned();
    let tls_err = |source| ConnectError::Tls {
        name: name.clone(),
        addr: addr.clone(),
        source,
    };
    let server_name = tls::server_name(&name).map_err(|e| {
        tls_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            e.to_string(),
        ))
    })?;
    let stream = tokio_rustls::TlsConnector::from(tls::http1_only(&config))
        .connect(server_name, tcp)
        .await
        .map_err(tls_err)?;
    Ok(Box::new(stream))
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

/// The WebSocket handshake (`ws`/`wss`, subprotocol `derp`) over `io`.
async fn websocket(
    url: &Url,
    headers: &[(String, String)],
    io: Stream,
) -> Result<tokio_tungstenite::WebSocketStream<Stream>, ConnectError> {
    let url_s = url.to_string();
    let ws_err = |e| ConnectError::WebSocket {
        url: url_s.clone(),
        source: Box::new(e),
    };
    let mut ws_url = url.clone();
    let scheme = match url.scheme() {
        "http" => "ws",
        "https" => "wss",
        other => other,
    };
    let _ = ws_url.set_scheme(scheme);
    let mut req = ws_url.as_str().into_client_request().map_err(ws_err)?;
    for (name, value) in headers {
        let bad = || ConnectError::Http {
            url: url_s.clone(),
            source: HttpError::BadHeader { name: name.clone() },
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let v = HeaderValue::from_str(value).map_err(|_| bad())?;
        req.headers_mut().append(n, v);
    }
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("derp"));
    let (ws, _resp) = tokio_tungstenite::client_async(req, io)
        .await
        .map_err(ws_err)?;
    Ok(ws)
}
