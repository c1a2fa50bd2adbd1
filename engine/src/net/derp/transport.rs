//! The byte stream under DERP: an upgraded HTTP/1.1 connection, or a WebSocket whose binary
//! messages form one stream regardless of message boundaries (tailnet.md §13.3 "WebSocket").

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// Read buffer size for stream transports.
const READ_CHUNK: usize = 64 << 10;

/// An upgraded stream carrying DERP frames.
pub(crate) enum Transport<S> {
    /// The connection itself after `101 Switching Protocols` (plain `Upgrade: DERP`).
    Stream { io: S, buf: BytesMut },
    /// A WebSocket with subprotocol `derp`.
    WebSocket(Box<WebSocketStream<S>>),
}

/// One read from a transport.
pub(crate) enum Read {
    /// Bytes of the DERP stream.
    Data(Bytes),
    /// The peer closed the stream.
    Eof,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport<S> {
    pub(crate) fn stream(io: S) -> Self {
        Transport::Stream {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    pub(crate) fn websocket(ws: WebSocketStream<S>) -> Self {
        Transport::WebSocket(Box::new(ws))
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Transport::Stream { .. } => "upgrade",
            Transport::WebSocket(_) => "websocket",
        }
    }

    /// Reads the next bytes. Cancel-safe: nothing is lost when the future is dropped.
    pub(crate) async fn read(&mut self) -> io::Result<Read> {
        match self {
            Transport::Stream { io, buf } => {
                if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
                let n = io.read_buf(buf).await?;
                if n == 0 {
                    return Ok(Read::Eof);
                }
                Ok(Read::Data(buf.split().freeze()))
            }
            Transport::WebSocket(ws) => loop {
                let Some(msg) = ws.next().await else {
                    return Ok(Read::Eof);
                };
                match msg.map_err(ws_io_error)? {
                    Message::Binary(b) => return Ok(Read::Data(b)),
                    Message::Close(_) => return Ok(Read::Eof),
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                        // tungstenite queues the pong for a ping; push it out now.
                        ws.flush().await.map_err(ws_io_error)?;
                    }
                    Message::Text(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "text WebSocket message on a DERP connection (binary expected)",
                        ));
                    }
                }
            },
        }
    }

    /// Writes all of `data`.
    pub(crate) async fn write(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            Transport::Stream { io, .. } => io.write_all(&data).await,
            Transport::WebSocket(ws) => ws.send(Message::Binary(data)).await.map_err(ws_io_error),
        }
    }

    /// Closes the write side (WebSocket: a close message).
    pub(crate) async fn shutdown(&mut self) {
        match self {
            Transport::Stream { io, .. } => {
                let _ = io.shutdown().await;
            }
            Transport::WebSocket(ws) => {
                let _ = WebSocketStream::close(ws, None).await;
            }
        }
    }
}

fn ws_io_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::UnexpectedEof, "WebSocket closed")
        }
        e => io::Error::other(e),
    }
}

/// A connection's one timer, re-armed only when the core's deadline moves earlier or by
/// more than [`Timer::SLACK`] (the client's idle deadline moves with every read; firing a
/// little early is harmless, `handle_timeout` then does nothing).
pub(crate) struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Option<std::time::Instant>,
}

impl Timer {
    const SLACK: std::time::Duration = std::time::Duration::from_secs(1);

    pub(crate) fn new() -> Self {
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            armed: None,
        }
    }

    pub(crate) fn arm(&mut self, deadline: Option<std::time::Instant>) {
        let Some(d) = deadline else {
            self.armed = None;
            return;
        };
        match self.armed {
            Some(a) if a <= d && d - a < Self::SLACK => {}
            Some(_) | None => {
                self.sleep.as_mut().reset(tokio::time::Instant::from_std(d));
                self.armed = Some(d);
            }
        }
    }

    /// Completes when the armed deadline passes; never when unarmed. Cancel-safe.
    pub(crate) async fn wait(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
    }
}
