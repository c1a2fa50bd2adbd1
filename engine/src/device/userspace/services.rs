//! What a simulated workspace agent serves on the tunnel's own addresses: a TCP echo and a
//! one-page HTTP server, each connection accepted from a [`StackListener`]. (Pings need
//! nothing here: the stack answers them itself.)
//!
//! The HTTP codec ([`parse_head`], [`response`]) is sans-IO: bytes in, bytes out;
//! [`serve_agent_services`] and the per-connection tasks are the shell.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use super::{ListenError, StackHandle, StackListener};

/// The longest request head (request line and headers) read; longer is answered 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// The request head must arrive within this time, or the connection is closed unanswered.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// After answering, how long the server waits for the client to close before it drops the
/// connection. Dropping it while the client still may send resets it, and a reset can
/// overtake the answer in the client's stack (a "lingering close", as HTTP servers do).
pub const LINGER: Duration = Duration::from_secs(2);

/// What the agent serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentServices {
    /// TCP echo (RFC 862): every byte back, until the client closes.
    pub echo_port: u16,
    /// HTTP/1.1: `page` for `GET /`.
    pub http_port: u16,
    /// The body of `GET /`, served as `text/html; charset=utf-8`.
    pub page: String,
}

impl Default for AgentServices {
    /// Echo on 7, HTTP on 80, a one-line page.
    fn default() -> Self {
        Self {
            echo_port: 7,
            http_port: 80,
            page: "<!doctype html><title>codervpn agent</title><p>codervpn userspace agent</p>\n"
                .to_owned(),
        }
    }
}

/// Listens on both ports and serves every connection, each in its own task. Returns
/// `Err` at once if a port cannot be listened on, `Ok` once the stack has stopped.
pub async fn serve_agent_services(
    handle: StackHandle,
    cfg: AgentServices,
) -> Result<(), ListenError> {
    AgentServer::bind(&handle, cfg).await?.serve().await;
    Ok(())
}

/// The agent's services, listening: connections are taken (the handshake completes) from
/// [`AgentServer::bind`] on, and served once [`AgentServer::serve`] runs.
pub struct AgentServer {
    echo: StackListener,
    http: StackListener,
    page: Arc<str>,
}

impl AgentServer {
    /// Listens on both ports.
    pub async fn bind(handle: &StackHandle, cfg: AgentServices) -> Result<Self, ListenError> {
        let echo = handle.listen(cfg.echo_port).await?;
        let http = handle.listen(cfg.http_port).await?;
        info!(
            echo_port = cfg.echo_port,
            http_port = cfg.http_port,
            "agent services listening"
        );
        Ok(Self {
            echo,
            http,
            page: cfg.page.into(),
        })
    }

    /// Serves every connection until the stack stops.
    pub async fn serve(self) {
        let Self { echo, http, page } = self;
        tokio::join!(
            serve(echo, "echo", echo_one),
            serve(http, "http", move |stream| {
                let page = Arc::clone(&page);
                async move { http_one(stream, &page).await }
            }),
        );
        debug!("agent services stopped: the stack is gone");
    }
}

/// Accepts until the stack stops, running `one` on each connection in its own task.
async fn serve<F, Fut>(mut listener: StackListener, what: &'static str, one: F)
where
    F: Fn(tokio::io::DuplexStream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    while let Ok((stream, peer)) = listener.accept().await {
        debug!(%peer, port = listener.port(), "{what}: connection accepted");
        let done = one(stream);
        tokio::spawn(async move {
            match done.await {
                Ok(()) => debug!(%peer, "{what}: connection done"),
                Err(e) => debug!(%peer, error = %e, "{what}: connection failed"),
            }
        });
    }
}

/// Echoes until the client closes its half, then closes ours.
async fn echo_one<S: AsyncRead + AsyncWrite>(stream: S) -> io::Result<()> {
    let (mut from, mut to) = tokio::io::split(stream);
    tokio::io::copy(&mut from, &mut to).await?;
    to.shutdown().await
}

/// Reads one request head, answers it, and closes.
async fn http_one<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, page: &str) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut head)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Ok(()), // closed before sending anything
        Ok(Err(e)) => return Err(e),
        Err(_elapsed) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete request head in time",
            ));
        }
    }
    let answer = match parse_head(&head) {
        Head::Complete(request) => response(Ok(&request), page),
        Head::Invalid => response(Err(Status::BadRequest), page),
        Head::Partial if head.len() >= MAX_HEAD => response(Err(Status::HeadTooLarge), page),
        // The client closed mid-head.
        Head::Partial => response(Err(Status::BadRequest), page),
    };
    stream.write_all(&answer).await?;
    stream.shutdown().await?;
    // Lingering close: drain until the client closes, or give up.
    let mut sink = [0u8; 1024];
    let drain = async {
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    Ok(())
}

/// Reads into `head` until it holds a complete or invalid head, or [`MAX_HEAD`] bytes, or
/// the client closes. False if the client closed before sending a byte.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, head: &mut Vec<u8>) -> io::Result<bool> {
    let mut buf = [0u8; 1024];
    loop {
        match parse_head(head) {
            Head::Complete(_) | Head::Invalid => return Ok(true),
            Head::Partial if head.len() >= MAX_HEAD => return Ok(true),
            Head::Partial => {}
        }
        let room = (MAX_HEAD - head.len()).min(buf.len());
        let n = stream.read(&mut buf[..room]).await?;
        if n == 0 {
            return Ok(!head.is_empty());
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// A request line worth answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub target: &'a str,
}

/// How far a request head has arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head<'a> {
    /// No blank line yet.
    Partial,
    Complete(Request<'a>),
    /// Not HTTP/1.x.
    Invalid,
}

/// An error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    BadRequest,
    HeadTooLarge,
}

/// Parses a request head: the request line and header lines, up to the blank line (CRLF,
/// or bare LF as RFC 9112 §2.2 allows). Header values are not interpreted.
pub fn parse_head(buf: &[u8]) -> Head<'_> {
    let end = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|sep| buf.windows(sep.len()).position(|w| w == *sep))
        .min();
    let Some(end) = end else {
        return Head::Partial;
    };
    let Ok(text) = std::str::from_utf8(&buf[..end]) else {
        return Head::Invalid;
    };
    let mut lines = text.lines();
    let Some(request_line) = lines.next() else {
        return Head::Invalid;
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Head::Invalid;
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    let target_ok = !target.is_empty() && target.bytes().all(|b| b.is_ascii_graphic());
    let version_ok = matches!(version, "HTTP/1.0" | "HTTP/1.1");
    // A header line is `name: value`; continuation lines (obsolete) are refused too.
    let headers_ok = lines.all(|l| {
        l.split_once(':')
            .is_some_and(|(name, _)| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()))
    });
    if !(method_ok && target_ok && version_ok && headers_ok) {
        return Head::Invalid;
    }
    Head::Complete(Request { method, target })
}

/// The whole response (head and body) to `request`: `page` for `GET /` (and its headers
/// for `HEAD /`), 404 for any other path, 405 for any other method.
pub fn response(request: Result<&Request<'_>, Status>, page: &str) -> Vec<u8> {
    let (status, extra, body, send_body) = match request {
        Ok(req) => {
            let path = req.target.split('?').next().unwrap_or_default();
            match (req.method, path) {
                ("GET" | "HEAD", "/") => ("200 OK", "", page, req.method == "GET"),
                ("GET" | "HEAD", _) => ("404 Not Found", "", "not found\n", req.method == "GET"),
                (_, _) => (
                    "405 Method Not Allowed",
                    "Allow: GET, HEAD\r\n",
                    "method not allowed\n",
                    true,
                ),
            }
        }
        Err(Status::BadRequest) => ("400 Bad Request", "", "bad request\n", true),
        Err(Status::HeadTooLarge) => (
            "431 Request Header Fields Too Large",
            "",
            "request head too large\n",
            true,
        ),
    };
    let content_type = if status.starts_with("200") {
        "text/html; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if send_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_partial_until_the_blank_line() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Head::Partial);
    }

    #[test]
    fn head_with_crlf_or_bare_lf_parses() {
        let want = Head::Complete(Request {
            method: "GET",
            target: "/x?y",
        });
        assert_eq!(
            parse_head(b"GET /x?y HTTP/1.1\r\nHost: a\r\n\r\nbody"),
            want
        );
        assert_eq!(parse_head(b"GET /x?y HTTP/1.0\nHost: a\n\n"), want);
    }

    #[test]
    fn garbage_heads_are_invalid() {
        for bad in [
            &b"\x16\x03\x01\x00\xa5\r\n\r\n"[..], // a TLS ClientHello
            b"GET /\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(bad),
                Head::Invalid,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// The response to `method` on `/`, with the page "page".
    fn answer_to(method: &str) -> String {
        let req = Request {
            method,
            target: "/",
        };
        String::from_utf8(response(Ok(&req), "page")).unwrap()
    }

    #[test]
    fn head_request_gets_headers_without_the_body() {
        let out = answer_to("HEAD");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(out.contains("Content-Length: 4\r\n"));
        assert!(out.ends_with("\r\n\r\n"));
    }

    #[test]
    fn other_methods_are_405_with_allow() {
        let out = answer_to("POST");
        assert!(out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(out.contains("Allow: GET, HEAD\r\n"));
    }
}
