//! The testbed's HTTP/1.1 server loop: the axum router on every accepted connection (plain
//! or TLS), upgrades allowed (DERP, the tailnet websocket), with a deadline for each
//! request head — a client that connects and sends nothing, or a byte now and then, is
//! dropped when it passes ([`HEADER_READ_TIMEOUT`]), which `axum::serve` cannot do — and a
//! graceful shutdown on stop, as `axum::serve` has.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{debug, trace};

use crate::tls;

/// How long a client may take to send a request head (the first one, and each one after an
/// idle keep-alive gap).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` (over TLS with `tls`) in the background until `stop`.
pub(crate) fn spawn(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    header_timeout: Duration,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    match tls {
        Some(server) => {
            let listener = tls::TlsListener::new(listener, server)?;
            tokio::spawn(serve(listener, app, header_timeout, stop));
        }
        None => {
            tokio::spawn(serve(listener, app, header_timeout, stop));
        }
    }
    Ok(())
}

async fn serve<L: Listener>(
    mut listener: L,
    app: Router,
    header_timeout: Duration,
    mut stop: oneshot::Receiver<()>,
) where
    L::Addr: std::fmt::Debug,
{
    // Dropped at stop: every connection then shuts down gracefully.
    let (stopping, stopped) = watch::channel(());
    loop {
        let (io, peer) = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => break,
        };
        trace!(?peer, "testbed connection accepted");
        let service = TowerToHyperService::new(app.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(?peer, error = %e, "testbed connection ended");
            }
        });
    }
    drop(stopping);
}
