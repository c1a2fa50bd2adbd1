//! The WebSocket under the tailnet connection (tailnet.md §4.1): binary messages, no
//! compression, the message sequence read and written as one byte stream.
//!
//! [`WsByteStream`] is tokio `AsyncRead`/`AsyncWrite` over a `WebSocketStream`. Reads
//! concatenate binary messages and never assume a message holds whole yamux frames; writes
//! are gathered until flush and sent as binary messages of at most [`MAX_WRITE_MESSAGE`]
//! bytes (under the 32 KiB default read limit of Coder's Go websocket library). With a
//! [`KeepAliveConfig`] it pings a quiet peer and fails reads once a ping goes unanswered
//! (see [`super::keepalive`]). [`serve_websocket`] is the server side, given an
//! already-upgraded socket; dialing is in [`super::dial`].

use std::future::Future;
use std::io;
use std::pin::Pin;
#[cfg(any(test, feature = "test-servers"))]
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::keepalive::{KeepAlive, KeepAliveAction, KeepAliveConfig, ProbeHandle};
#[cfg(any(test, feature = "test-servers"))]
use super::mux::MuxError;
#[cfg(any(test, feature = "test-servers"))]
use super::server::{Router, serve_mux};

/// Largest binary message we send.
pub const MAX_WRITE_MESSAGE: usize = 32 * 1024;
/// Largest message or frame we accept: a hashicorp/yamux peer writes a data frame's body
/// in one write, up to the 256 KiB window.
pub const MAX_READ_MESSAGE: usize = 1 << 20;

/// The websocket configuration of both sides.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_READ_MESSAGE))
        .max_frame_size(Some(MAX_READ_MESSAGE))
}

/// A websocket as one byte stream.
pub struct WsByteStream<S> {
    ws: WebSocketStream<S>,
    read: Bytes,
    read_eof: bool,
    write: Vec<u8>,
    keepalive: Option<Liveness>,
    probe: Option<ProbeHandle>,
}

/// The tokio side of [`KeepAlive`]: its timer and a ping waiting for room in the sink.
struct Liveness {
    core: KeepAlive,
    timer: Pin<Box<Sleep>>,
    ping_queued: bool,
}

impl<S> WsByteStream<S> {
    /// Without keep-alive (the server side: the client pings).
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self::with_keepalive(ws, None)
    }

    /// With keep-alive when `config` is set (the client side).
    pub fn with_keepalive(ws: WebSocketStream<S>, config: Option<KeepAliveConfig>) -> Self {
        let keepalive = config.map(|config| {
            let core = KeepAlive::new(config, Instant::now().into_std());
            let timer = Box::pin(tokio::time::sleep_until(Instant::from_std(
                core.poll_timeout(),
            )));
            Liveness {
                core,
                timer,
                ping_queued: false,
            }
        });
        Self {
            ws,
            read: Bytes::new(),
            read_eof: false,
            write: Vec::new(),
            keepalive,
            probe: None,
        }
    }

    /// Also pings at once, with its own deadline, whenever `probe` asks (keep-alive only).
    pub fn with_probe(mut self, probe: Option<ProbeHandle>) -> Self {
        self.probe = probe;
        self
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsByteStream<S> {
    /// Runs the keep-alive timer; an error once a ping went unanswered.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(live) = &mut self.keepalive else {
            return Ok(());
        };
        if let Some(timeout) = self.probe.as_ref().and_then(|p| p.take(cx)) {
            tracing::debug!(?timeout, "probing the tailnet websocket");
            live.core.probe(timeout);
            live.timer
                .as_mut()
                .reset(Instant::from_std(live.core.poll_timeout()));
        }
        while live.timer.as_mut().poll(cx).is_ready() {
            match live.core.handle_timeout(Instant::now().into_std()) {
                KeepAliveAction::Wait => {}
                KeepAliveAction::Ping => {
                    tracing::trace!("websocket quiet: ping");
                    live.ping_queued = true;
                }
                KeepAliveAction::Dead { waited } => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the tailnet websocket peer did not answer a ping within {waited:?}"
                        ),
                    ));
                }
            }
            let next = Instant::from_std(live.core.poll_timeout());
            live.timer.as_mut().reset(next);
        }
        if live.ping_queued && Pin::new(&mut self.ws).poll_ready(cx).is_ready() {
            live.ping_queued = false;
            Pin::new(&mut self.ws)
                .start_send(Message::Ping(Bytes::new()))
                .map_err(ws_io_error)?;
            // Pushed out now or with the next flush.
            let _ = Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_io_error)?;
        }
        Ok(())
    }

    fn received(&mut self) {
        if let Some(live) = &mut self.keepalive {
            live.core.on_receive(Instant::now().into_std());
            let next = Instant::from_std(live.core.poll_timeout());
            live.timer.as_mut().reset(next);
        }
    }

    /// Starts sending the gathered bytes as one binary message.
    fn poll_send_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_io_error)?;
        let message = Bytes::from(std::mem::take(&mut self.write));
        tracing::trace!(len = message.len(), "websocket message out");
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(message))
            .map_err(ws_io_error)?;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.poll_keepalive(cx)?;
        loop {
            if !this.read.is_empty() {
                let n = this.read.len().min(buf.remaining());
                buf.put_slice(&this.read.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            let next = ready!(Pin::new(&mut this.ws).poll_next(cx));
            if matches!(next, Some(Ok(_))) {
                this.received();
            }
            match next {
                Some(Ok(Message::Binary(data))) => {
                    tracing::trace!(len = data.len(), "websocket message in");
                    this.read = data;
                }
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on the tailnet websocket (only binary messages carry data)",
                    )));
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    tracing::debug!(?frame, "websocket closed by the peer");
                    this.read_eof = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(ws_io_error(e))),
                None => this.read_eof = true,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write.len() >= MAX_WRITE_MESSAGE {
            ready!(this.poll_send_gathered(cx))?;
        }
        let n = data.len().min(MAX_WRITE_MESSAGE - this.write.len());
        this.write.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_gathered(cx))?;
        Pin::new(&mut this.ws).poll_flush(cx).map_err(ws_io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_gathered(cx))?;
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ws_io_error(e))),
        }
    }
}

fn ws_io_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "the websocket is closed")
        }
        other => io::Error::other(other),
    }
}

#[cfg(any(test, feature = "test-servers"))]
/// Serves the tailnet dRPC API on an already-upgraded websocket until the connection ends.
pub async fn serve_websocket<S>(ws: WebSocketStream<S>, router: Arc<Router>) -> Result<(), MuxError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_mux(WsByteStream::new(ws), router).await
}
