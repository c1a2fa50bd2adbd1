//! The HTTP/1.1 upgrade exchange in front of DERP (tailnet.md §13.3 "Upgrade request",
//! "Upgrade response"; Go: `derphttp_client.go` `connect`, `derphttp_server.go` `Handler`).
//! Byte-level only: building and parsing heads, no I/O.

use url::Url;

use super::keys::{KeyParseError, NodePublicKey, PROTOCOL_VERSION};

/// Longest HTTP head (request or response line plus headers) either side reads.
pub const MAX_HEAD_LEN: usize = 64 << 10;
const MAX_HEADERS: usize = 64;
/// Header with which a client that already knows the server key skips the 101 response.
pub const FAST_START_HEADER: &str = "Derp-Fast-Start";

/// Upgrade exchange failures.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP head is over {MAX_HEAD_LEN} bytes")]
    HeadTooLong,
    #[error("malformed HTTP head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("URL {url} has no host")]
    NoHost { url: String },
    #[error("header {name:?} is not a valid HTTP header (name or value)")]
    BadHeader { name: String },
    #[error(
        "DERP server answered {status} {reason} instead of 101 Switching Protocols{}",
        if body.is_empty() { String::new() } else { format!(": {body}") }
    )]
    NotSwitching {
        status: u16,
        reason: String,
        body: String,
    },
    #[error("DERP server sent a bad Derp-Public-Key header: {0}")]
    BadServerKeyHeader(#[from] KeyParseError),
}

/// Where the head ends: the index just past `\r\n\r\n`, if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The `GET /derp` upgrade request for `url`, with the caller's headers (tailnet.md §2) in
/// order, then `Upgrade: DERP` and `Connection: Upgrade`.
pub fn upgrade_request(url: &Url, headers: &[(String, String)]) -> Result<Vec<u8>, HttpError> {
    let host = host_header(url)?;
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
    for (name, value) in headers {
        check_header(name, value)?;
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Upgrade: DERP\r\nConnection: Upgrade\r\n\r\n");
    Ok(out)
}

/// `host[:port]` as the `Host` header wants it (port only when not the scheme default).
pub fn host_header(url: &Url) -> Result<String, HttpError> {
    let Some(host) = url.host_str() else {
        return Err(HttpError::NoHost {
            url: url.to_string(),
        });
    };
    Ok(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    })
}

fn check_header(name: &str, value: &str) -> Result<(), HttpError> {
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    let value_ok = value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    if name_ok && value_ok {
        Ok(())
    } else {
        Err(HttpError::BadHeader {
            name: name.chars().take(64).collect(),
        })
    }
}

/// A parsed `101 Switching Protocols` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeResponse {
    /// `Derp-Public-Key`, when the server sent it.
    pub server_key: Option<NodePublicKey>,
}

/// Parses the server's answer to [`upgrade_request`]: `head` is the response head and
/// `after` whatever was read past it (for the error body of a refusal).
pub fn parse_upgrade_response(head: &[u8], after: &[u8]) -> Result<UpgradeResponse, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    if resp.parse(head)?.is_partial() {
        return Err(HttpError::Parse(httparse::Error::Status));
    }
    let status = resp.code.unwrap_or(0);
    if status != 101 {
        let mut body = String::from_utf8_lossy(&after[..after.len().min(512)]).into_owned();
        body.truncate(body.trim_end().len());
        return Err(HttpError::NotSwitching {
            status,
            reason: resp.reason.unwrap_or("").to_owned(),
            body,
        });
    }
    let server_key = match header(resp.headers, "Derp-Public-Key") {
        Some(v) => Some(NodePublicKey::from_hex(&String::from_utf8_lossy(v))?),
        None => None,
    };
    Ok(UpgradeResponse { server_key })
}

/// The server's `101` for a plain DERP upgrade (Go: `derphttp.Handler`).
pub fn derp_switching_response(server_key: &NodePublicKey) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\
         Derp-Version: {PROTOCOL_VERSION}\r\nDerp-Public-Key: {}\r\n\r\n",
        server_key.to_hex()
    )
    .into_bytes()
}

/// The server's `101` for a WebSocket upgrade with subprotocol `derp`.
pub fn websocket_switching_response(sec_websocket_key: &str) -> Vec<u8> {
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(sec_websocket_key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: derp\r\n\r\n"
    )
    .into_bytes()
}

/// A plain-text error response that closes the connection.
pub fn error_response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What an incoming request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeKind {
    /// `Upgrade: DERP` (any case); `fast_start` when `Derp-Fast-Start: 1`.
    Derp { fast_start: bool },
    /// `Upgrade: websocket` with subprotocol `derp`.
    WebSocket { key: String },
}

/// Why a request is not a DERP upgrade, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
}

/// A request that is not a DERP upgrade.
#[derive(Debug)]
pub enum BadRequest {
    /// Well-formed, but not for us: answer with this status.
    Refused(Refusal),
    /// Not parseable HTTP/1.1: close without answering.
    Malformed(HttpError),
}

/// Classifies a request head the way Coder's `derphttp.Handler` does: `Upgrade` compared
/// case-insensitively; WebSocket only with the `derp` subprotocol; anything else gets
/// `426 Upgrade Required`.
pub fn parse_upgrade_request(head: &[u8]) -> Result<UpgradeKind, BadRequest> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(s) if s.is_complete() => {}
        Ok(_) => {
            return Err(BadRequest::Malformed(HttpError::Parse(
                httparse::Error::Token,
            )));
        }
        Err(e) => return Err(BadRequest::Malformed(e.into())),
    }
    if req.method != Some("GET") {
        return Err(BadRequest::Refused(Refusal {
            status: 405,
            reason: "Method Not Allowed",
            message: "DERP requires GET".into(),
        }));
    }
    let path = req.path.unwrap_or("");
    if path != "/derp" && !path.starts_with("/derp?") {
        return Err(BadRequest::Refused(Refusal {
            status: 404,
            reason: "Not Found",
            message: format!("no DERP at {path}"),
        }));
    }
    let upgrade = header(req.headers, "Upgrade")
        .map(|v| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
        .unwrap_or_default();
    let fast_start = header(req.headers, FAST_START_HEADER).is_some_and(|v| v == b"1");
    let derp_subprotocol = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .any(|p| p.trim_ascii() == b"derp");
    let ws_key = header(req.headers, "Sec-WebSocket-Key")
        .map(|v| String::from_utf8_lossy(v).trim().to_owned());
    match (upgrade.as_str(), ws_key) {
        ("derp", _) => Ok(UpgradeKind::Derp { fast_start }),
        ("websocket", Some(key)) if derp_subprotocol => Ok(UpgradeKind::WebSocket { key }),
        _ => Err(BadRequest::Refused(Refusal {
            status: 426,
            reason: "Upgrade Required",
            message: "DERP requires connection upgrade".into(),
        })),
    }
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_request_carries_caller_headers_in_order_then_upgrade() {
        let url = Url::parse("http://127.0.0.1:8080/derp").unwrap();
        let headers = vec![
            ("Coder-Session-Token".to_owned(), "tok".to_owned()),
            ("X-A".to_owned(), "1".to_owned()),
            ("X-A".to_owned(), "2".to_owned()),
        ];
        let req = String::from_utf8(upgrade_request(&url, &headers).unwrap()).unwrap();
        assert_eq!(
            req,
            "GET /derp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nCoder-Session-Token: tok\r\n\
             X-A: 1\r\nX-A: 2\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
        );
    }

    #[test]
    fn header_with_newline_is_refused() {
        let url = Url::parse("http://h/derp").unwrap();
        let bad = vec![("X".to_owned(), "a\r\nEvil: 1".to_owned())];
        assert!(matches!(
            upgrade_request(&url, &bad),
            Err(HttpError::BadHeader { .. })
        ));
    }

    #[test]
    fn switching_response_round_trips_the_server_key() {
        let key = NodePublicKey::from_bytes([9; 32]);
        let resp = derp_switching_response(&key);
        let end = head_end(&resp).unwrap();
        assert_eq!(end, resp.len());
        let parsed = parse_upgrade_response(&resp[..end], &[]).unwrap();
        assert_eq!(parsed.server_key, Some(key));
    }

    #[test]
    fn refusal_reports_status_and_body() {
        let resp = error_response(426, "Upgrade Required", "DERP requires connection upgrade");
        let end = head_end(&resp).unwrap();
        let err = parse_upgrade_response(&resp[..end], &resp[end..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DERP server answered 426 Upgrade Required instead of 101 Switching Protocols: \
             DERP requires connection upgrade"
        );
    }

    #[test]
    fn upgrade_header_is_compared_case_insensitively() {
        let req = b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: dErP\r\nConnection: Upgrade\r\n\r\n";
        assert!(matches!(
            parse_upgrade_request(req),
            Ok(UpgradeKind::Derp { fast_start: false })
        ));
    }

    #[test]
    fn websocket_needs_the_derp_subprotocol() {
        let with = b"GET /derp HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Key: abc\r\n\
                     Sec-WebSocket-Protocol: x, derp\r\n\r\n";
        assert!(matches!(
            parse_upgrade_request(with),
            Ok(UpgradeKind::WebSocket { key }) if key == "abc"
        ));
        let without = b"GET /derp HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Key: abc\r\n\r\n";
        assert!(matches!(
            parse_upgrade_request(without),
            Err(BadRequest::Refused(Refusal { status: 426, .. }))
        ));
    }

    #[test]
    fn plain_get_is_refused_with_426() {
        let req = b"GET /derp HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            parse_upgrade_request(req),
            Err(BadRequest::Refused(Refusal { status: 426, .. }))
        ));
    }
}
