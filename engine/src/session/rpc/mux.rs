//! yamux glue: the `yamux` crate (libp2p's, wire-compatible with hashicorp/yamux) driven by
//! one task per session (tailnet.md §4.2, §13.1).
//!
//! What the crate does and does not do, against hashicorp/yamux's defaults that Coder uses:
//! - Frame header, types, flags, odd client / even server stream ids: the same (checked
//!   byte for byte by `tests/rpc_yamux_wire.rs`).
//! - Opening: the crate sends SYN on the stream's first frame (usually data) instead of a
//!   window update with delta 0 first; hashicorp accepts SYN on either frame type.
//!   Accepting: it sends ACK on the first frame it writes; the dRPC server calls
//!   [`acknowledge`] (an empty data frame with ACK) at once so that a hashicorp client's 75 s
//!   stream-open timeout never fires while a call waits for its first reply.
//! - Windows: 256 KiB per stream at the start, both ways. The crate grows a busy stream's
//!   receive window towards the bandwidth-delay product up to a connection-wide budget;
//!   [`config`] sets that budget to exactly 256 KiB × the stream limit, which pins every
//!   window at 256 KiB like hashicorp's default `MaxStreamWindowSize`. Window updates are
//!   sent when half the window is consumed, as in hashicorp. Data frames are split at
//!   16 KiB.
//! - Keep-alive: none. The crate answers pings (ACK, same value) and sends its own pings
//!   only to measure the round-trip time (at most every 10 s, and only while the session is
//!   busy); a missing answer does not close the session. Coder's server pings every 30 s
//!   and closes the session itself when the answer does not come; our client gets the same
//!   liveness one layer down, from websocket pings (`keepalive`, `ws`).
//! - Go away: the crate treats any go-away frame as the end of the whole session;
//!   hashicorp only refuses new streams and lets open ones finish. On a protocol error
//!   (e.g. a peer overrunning a window) the crate sends go away `1` but, unlike hashicorp,
//!   does not close the session itself: it ends when the peer closes the transport, which
//!   hashicorp does on receiving that go away.
//! - Half-close and reset go out as data frames with FIN / RST and length 0 (hashicorp uses
//!   window-update frames); hashicorp honours the flags on both frame types.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// Streams per session (the crate's default).
pub const MAX_STREAMS: usize = 512;
/// Receive window of every stream (hashicorp/yamux `initialStreamWindow`).
pub const STREAM_WINDOW: usize = 256 * 1024;

/// A yamux stream as a tokio byte stream.
pub type MuxStream = Compat<yamux::Stream>;

/// Why a session ended or a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("the yamux session failed: {0}")]
    Session(String),
    #[error("the yamux session is closed")]
    Closed,
}

impl From<yamux::ConnectionError> for MuxError {
    fn from(e: yamux::ConnectionError) -> Self {
        match e {
            yamux::ConnectionError::Closed => Self::Closed,
            other => Self::Session(other.to_string()),
        }
    }
}

/// hashicorp/yamux's default behaviour, as far as the crate allows: 256 KiB windows that
/// do not grow, up to [`MAX_STREAMS`] streams.
pub fn config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    cfg.set_max_num_streams(MAX_STREAMS);
    cfg.set_max_connection_receive_window(Some(MAX_STREAMS * STREAM_WINDOW));
    cfg
}

enum Command {
    Open(oneshot::Sender<Result<yamux::Stream, MuxError>>),
    Close,
}

/// The client side of a yamux session: opens streams. Clones share the session; it closes
/// (go away, then the transport) when [`MuxClient::close`] is called, or when every clone
/// and every stream opened through it is gone.
#[derive(Clone)]
pub struct MuxClient {
    cmds: mpsc::Sender<Command>,
    ended: watch::Receiver<Option<Result<(), MuxError>>>,
}

impl std::fmt::Debug for MuxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxClient")
            .field("ended", &*self.ended.borrow())
            .finish()
    }
}

impl MuxClient {
    /// Starts a client session over `io` on a new task.
    pub fn start<T>(io: T) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = yamux::Connection::new(io.compat(), config(), yamux::Mode::Client);
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (end_tx, end_rx) = watch::channel(None);
        tokio::spawn(async move {
            let result = drive_client(conn, cmd_rx).await;
            match &result {
                Ok(()) => tracing::debug!("yamux client session closed"),
                Err(e) => tracing::debug!(error = %e, "yamux client session failed"),
            }
            let _ = end_tx.send(Some(result));
        });
        Self {
            cmds: cmd_tx,
            ended: end_rx,
        }
    }

    /// Opens a stream. The peer learns of it with the first bytes written to it.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Command::Open(tx))
            .await
            .map_err(|_| self.end_error())?;
        match rx.await {
            Ok(result) => result.map(FuturesAsyncReadCompatExt::compat),
            Err(_) => Err(self.end_error()),
        }
    }

    /// Closes the session: go away, then the transport. Open streams end.
    pub async fn close(&self) {
        let _ = self.cmds.send(Command::Close).await;
        let _ = self.ended().await;
    }

    /// Waits until the session has ended; `Ok` for a clean close by either side.
    pub async fn ended(&self) -> Result<(), MuxError> {
        let mut rx = self.ended.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or(Err(MuxError::Closed)),
            Err(_) => Err(MuxError::Closed),
        }
    }

    /// Whether the session has ended.
    pub fn is_ended(&self) -> bool {
        self.ended.borrow().is_some()
    }

    fn end_error(&self) -> MuxError {
        match &*self.ended.borrow() {
            Some(Err(e)) => e.clone(),
            Some(Ok(())) | None => MuxError::Closed,
        }
    }
}

async fn drive_client<T>(
    mut conn: yamux::Connection<Compat<T>>,
    mut cmds: mpsc::Receiver<Command>,
) -> Result<(), MuxError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut waiting: VecDeque<oneshot::Sender<Result<yamux::Stream, MuxError>>> = VecDeque::new();
    let mut closing = false;
    poll_fn(|cx| {
        while !closing {
            match cmds.poll_recv(cx) {
                Poll::Ready(Some(Command::Open(tx))) => waiting.push_back(tx),
                Poll::Ready(Some(Command::Close)) | Poll::Ready(None) => closing = true,
                Poll::Pending => break,
            }
        }
        if closing {
            for tx in waiting.drain(..) {
                let _ = tx.send(Err(MuxError::Closed));
            }
            return conn.poll_close(cx).map_err(MuxError::from);
        }
        while !waiting.is_empty() {
            match conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    tracing::trace!(id = %stream.id(), "yamux stream opened");
                    if let Some(tx) = waiting.pop_front() {
                        let _ = tx.send(Ok(stream));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => break,
            }
        }
        loop {
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    // Coder's server never opens streams towards the client.
                    tracing::debug!(id = %stream.id(), "refusing a server-opened yamux stream");
                    drop(stream);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Runs the server side of a yamux session over `io`, handing each stream the client opens
/// to `on_stream` (which should spawn). Returns when the session ends.
pub async fn serve<T, F>(io: T, mut on_stream: F) -> Result<(), MuxError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(MuxStream),
{
    let mut conn = yamux::Connection::new(io.compat(), config(), yamux::Mode::Server);
    poll_fn(|cx| {
        loop {
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    tracing::trace!(id = %stream.id(), "yamux stream accepted");
                    on_stream(stream.compat());
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Sends the ACK of an accepted stream now: an empty data frame with the ACK flag (the
/// crate would otherwise wait for the first reply bytes).
pub async fn acknowledge(stream: &mut MuxStream) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let n = stream.write(&[]).await?;
    debug_assert_eq!(n, 0);
    stream.flush().await
}

/// Keeps a session alive for as long as the value lives (held by client call tasks).
pub(crate) fn keep_alive_token(client: &MuxClient) -> Box<dyn std::any::Any + Send> {
    Box::new(Arc::new(client.cmds.clone()))
}
