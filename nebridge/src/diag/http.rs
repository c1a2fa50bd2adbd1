//! `codervpn up --metrics-listen`: the metrics over plain HTTP for a Prometheus scraper.
//! One request per connection (`GET /metrics`), a request head of at most 8 KiB read
//! within 5 s; anything else gets 404/405/400 and the connection is closed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::UpDiag;
use super::metrics::CONTENT_TYPE;

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, diag: Arc<UpDiag>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let diag = diag.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &diag).await {
                        debug!(%peer, error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, diag: &UpDiag) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => return respond(&mut stream, 400, "text/plain", "bad request\n").await,
        Ok(Err(e)) => return Err(e),
        Err(_) => return respond(&mut stream, 408, "text/plain", "request timeout\n").await,
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let v = diag.answer(json!({ "request": "metrics" })).await;
            let text = v["text"].as_str().unwrap_or_default().to_owned();
            respond(&mut stream, 200, CONTENT_TYPE, &text).await
        }
        ("GET", _) => respond(&mut stream, 404, "text/plain", "not found; try /metrics\n").await,
        _ => respond(&mut stream, 405, "text/plain", "only GET\n").await,
    }
}

/// The request head up to the blank line; `None` when it is too long or not HTTP.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(String::from_utf8(buf[..end].to_vec()).ok());
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Timeout",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
