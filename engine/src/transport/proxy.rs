//! HTTP proxies for the tunnel's own TCP connections (the tailnet websocket and the DERP
//! relays), chosen from the environment as Go's `http.ProxyFromEnvironment` chooses them,
//! so a deployment reachable only through a corporate proxy works as it does for the Go
//! tunnel. The REST calls go through reqwest, which reads the same variables.
//!
//! Rules (golang.org/x/net/http/httpproxy): `HTTPS_PROXY` (or `https_proxy`) for `https`
//! and `wss` URLs, `HTTP_PROXY` (or `http_proxy`) for `http` and `ws`; `NO_PROXY` (or
//! `no_proxy`) lists hosts that are reached directly — `*` for all, an IP, a CIDR, a domain
//! (itself and its subdomains), `.domain` (subdomains only), each with an optional `:port`;
//! `localhost` and loopback addresses are never proxied. A proxy value without a scheme is
//! `http://`. Only `http://` proxies are spoken (an HTTP `CONNECT` tunnel, with
//! `Proxy-Authorization: Basic` when the proxy URL carries a user); others are refused with
//! an error that says so.
//!
//! The selection and the `CONNECT` exchange are sans-IO ([`Proxies::select`],
//! [`connect_request`], [`parse_connect_response`]); [`connect`] is the tokio shell.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

/// The most a proxy's answer to `CONNECT` may take, headers included.
pub const MAX_CONNECT_RESPONSE: usize = 8192;
/// How long the proxy has to answer `CONNECT`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The proxy settings of an environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proxies {
    http: Option<String>,
    https: Option<String>,
    no_proxy: Vec<NoProxy>,
    no_proxy_all: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum NoProxy {
    Net(IpNet, Option<u16>),
    /// A domain and, unless `subdomains_only` (a leading `.` or `*.`), the name itself.
    Domain {
        name: String,
        subdomains_only: bool,
        port: Option<u16>,
    },
}

/// A proxy to go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `host:port` of the proxy.
    pub addr: (String, u16),
    /// The `Proxy-Authorization` value, when the proxy URL has a user.
    pub authorization: Option<String>,
    /// The proxy URL without its password, for messages.
    pub shown: String,
}

impl Proxies {
    /// Reads the variables of this process.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (upper-case name first, then lower-case).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let any = |upper: &str, lower: &str| {
            get(upper)
                .or_else(|| get(lower))
                .filter(|v| !v.trim().is_empty())
        };
        let mut out = Self {
            http: any("HTTP_PROXY", "http_proxy"),
            https: any("HTTPS_PROXY", "https_proxy"),
            ..Self::default()
        };
        for entry in any("NO_PROXY", "no_proxy")
            .unwrap_or_default()
            .split([',', ' '])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            if entry == "*" {
                out.no_proxy_all = true;
                continue;
            }
            out.no_proxy.extend(NoProxy::parse(entry));
        }
        out
    }

    /// The proxy for a connection to `host:port` made for a URL of `scheme`, or `None` for
    /// a direct connection. An unusable proxy setting is an error naming the variable's value.
    pub fn select(&self, scheme: &str, host: &str, port: u16) -> Result<Option<Proxy>, String> {
        let value = match scheme {
            "https" | "wss" => &self.https,
            "http" | "ws" => &self.http,
            _ => return Ok(None),
        };
        let Some(value) = value else { return Ok(None) };
        if !self.use_proxy(host, port) {
            return Ok(None);
        }
        parse_proxy(value).map(Some)
    }

    fn use_proxy(&self, host: &str, port: u16) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        if host == "localhost" {
            return false;
        }
        let ip = host.parse::<IpAddr>().ok();
        if ip.is_some_and(|ip| ip.is_loopback()) || self.no_proxy_all {
            return false;
        }
        let host = host.trim_end_matches('.');
        !self.no_proxy.iter().any(|e| match e {
            NoProxy::Net(net, p) => {
                ip.is_some_and(|ip| net.contains(&ip)) && p.is_none_or(|p| p == port)
            }
            NoProxy::Domain {
                name,
                subdomains_only,
                port: p,
            } => {
                let sub = host.ends_with(&format!(".{name}"));
                let matches = sub || (!subdomains_only && host == name);
                matches && p.is_none_or(|p| p == port)
            }
        })
    }
}

impl NoProxy {
    fn parse(entry: &str) -> Option<Self> {
        let entry = entry.to_ascii_lowercase();
        if let Ok(net) = entry.parse::<IpNet>() {
            return Some(Self::Net(net, None));
        }
        if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Some(Self::Net(IpNet::from(ip), None));
        }
        // host:port or [v6]:port
        let (host, port) = match entry.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => (h, Some(p.parse::<u16>().ok()?)),
            _ => (entry.as_str(), None),
        };
        let host = host.trim_matches(['[', ']']);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Self::Net(IpNet::from(ip), port));
        }
        let subdomains_only = host.starts_with('.') || host.starts_with("*.");
        let name = host.trim_start_matches("*.").trim_matches('.').to_owned();
        (!name.is_empty()).then_some(Self::Domain {
            name,
            subdomains_only,
            port,
        })
    }
}

/// Parses a proxy variable's value (`http://[user[:pass]@]host[:port]`, scheme optional).
fn parse_proxy(value: &str) -> Result<Proxy, String> {
    let value = value.trim();
    let with_scheme = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| format!("proxy {value:?}: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "proxy {value:?}: only http:// proxies are supported, not {}://",
            url.scheme()
        ));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("proxy {value:?}: no host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = url.port().unwrap_or(80);
    let authorization = (!url.username().is_empty()).then(|| {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let creds = format!(
            "{}:{}",
            decode(url.username()),
            decode(url.password().unwrap_or(""))
        );
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        )
    });
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    Ok(Proxy {
        addr: (host, port),
        authorization,
        shown: shown.as_str().trim_end_matches('/').to_owned(),
    })
}

/// The `CONNECT` request for `host:port` through `proxy`.
pub fn connect_request(proxy: &Proxy, host: &str, port: u16) -> Vec<u8> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.authorization {
        req.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// What the proxy's answer says so far.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectResponse {
    /// The headers are not complete yet.
    Partial,
    /// 2xx: the tunnel is open; the bytes after the headers (`extra` of them) already
    /// belong to the tunnelled connection.
    Established { extra: usize },
    /// Anything else: the status line, for the error.
    Refused(String),
}

/// Parses the proxy's answer to `CONNECT` from the bytes read so far.
pub fn parse_connect_response(buf: &[u8]) -> Result<ConnectResponse, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_CONNECT_RESPONSE => Err(format!(
            "the proxy's answer to CONNECT has no end of headers within {MAX_CONNECT_RESPONSE} bytes"
        )),
        Ok(httparse::Status::Partial) => Ok(ConnectResponse::Partial),
        Ok(httparse::Status::Complete(len)) => {
            let code = resp.code.unwrap_or(0);
            if (200..300).contains(&code) {
                Ok(ConnectResponse::Established {
                    extra: buf.len() - len,
                })
            } else {
                Ok(ConnectResponse::Refused(format!(
                    "{code} {}",
                    resp.reason.unwrap_or("")
                )))
            }
        }
        Err(e) => Err(format!("the proxy's answer to CONNECT is not HTTP: {e}")),
    }
}

/// A TCP connection to `host:port` for a URL of `scheme`: through the environment's proxy
/// when it names one for this host, directly otherwise. Errors name the proxy.
pub async fn connect(scheme: &str, host: &str, port: u16) -> io::Result<TcpStream> {
    connect_with(&Proxies::from_env(), scheme, host, port).await
}

/// [`connect`] with the given settings instead of the environment's.
pub async fn connect_with(
    proxies: &Proxies,
    scheme: &str,
    host: &str,
    port: u16,
) -> io::Result<TcpStream> {
    let host = host.trim_matches(['[', ']']);
    let proxy = proxies
        .select(scheme, host, port)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let Some(proxy) = proxy else {
        return TcpStream::connect((host, port)).await;
    };
    tracing::debug!(proxy = %proxy.shown, host, port, "connecting through the HTTP proxy");
    let shown = proxy.shown.clone();
    let tunnel = async {
        let mut tcp = TcpStream::connect((proxy.addr.0.as_str(), proxy.addr.1))
            .await
            .map_err(|e| with_context(e, &format!("connecting to proxy {shown}")))?;
        let during = |e| with_context(e, &format!("proxy {shown} during CONNECT {host}:{port}"));
        tcp.write_all(&connect_request(&proxy, host, port))
            .await
            .map_err(during)?;
        // Read byte by byte: nothing of the tunnelled connection may be consumed here.
        let mut buf = Vec::with_capacity(256);
        loop {
            let mut b = [0u8; 1];
            if tcp.read(&mut b).await.map_err(during)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("proxy {shown} closed the connection before answering CONNECT"),
                ));
            }
            buf.push(b[0]);
            if !buf.ends_with(b"\n") && buf.len() < MAX_CONNECT_RESPONSE {
                continue;
            }
            match parse_connect_response(&buf).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("proxy {shown}: {e}"))
            })? {
                ConnectResponse::Partial => {}
                ConnectResponse::Established { .. } => return Ok(tcp),
                ConnectResponse::Refused(status) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("proxy {shown} refused CONNECT {host}:{port}: {status}"),
                    ));
                }
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, tunnel)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "proxy {shown} did not answer CONNECT {host}:{port} within {}s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            ))
        })
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
