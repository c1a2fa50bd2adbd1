//! A CoderVPN connection for either role over any byte stream: the tokio shell around the
//! sans-IO header, frame and RPC pieces.
//!
//! Two tasks own the stream: a reader (frames in, replies routed to their callers, requests
//! and one-way messages handed to the connection's incoming channel) and a writer (frames out, one at a
//! time, each prefix and body written together). A [`Handle`] sends through the writer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, error, trace, warn};

use crate::frame::{FrameDecoder, FrameError, decode_message, encode_frame};
use crate::header::{HeaderError, HeaderReader, HeaderTooLong, build_header, validate_header};
use crate::rpc::{self, Dispatch};
use crate::side::Side;
use crate::version::{Version, VersionList};

const OUTGOING_QUEUE: usize = 256;
const INCOMING_QUEUE: usize = 128;
const READ_CHUNK: usize = 16 * 1024;

/// Why the connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake failed: {0}")]
    Io(#[source] std::io::Error),
    #[error("handshake failed: peer closed the stream before sending its header")]
    Eof,
    #[error("handshake failed: {0}")]
    TooLong(#[from] HeaderTooLong),
    #[error("handshake failed: cancelled")]
    Cancelled,
    #[error(transparent)]
    Validate(#[from] HeaderError),
}

/// Why the connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it ([`Handle::close`], or every handle was dropped).
    Local,
    /// We wrote our final frame ([`Handle::send_final`]).
    Finished,
    /// The peer closed its end between frames.
    PeerClosed,
    /// A fatal protocol or I/O error; the text says which.
    Error(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Local => f.write_str("connection closed locally"),
            CloseReason::Finished => f.write_str("connection finished"),
            CloseReason::PeerClosed => f.write_str("unexpected EOF"),
            CloseReason::Error(e) => f.write_str(e),
        }
    }
}

/// A request or send that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot send: {0}")]
    Frame(#[from] FrameError),
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    #[error("outgoing queue full; message dropped")]
    QueueFull,
}

/// A message from the peer that is not a reply to one of our requests.
#[derive(Debug)]
pub enum Incoming<M> {
    /// Must be answered exactly once with [`Handle::reply`].
    Request { id: u64, msg: M },
    /// A one-way message (no `rpc`).
    OneWay(M),
}

/// An established connection: a handle to send with, and the stream of incoming messages.
pub struct Connection<S: Side> {
    handle: Handle<S>,
    incoming: mpsc::Receiver<Incoming<S::In>>,
}

/// Sends on a connection. Cheap to clone.
pub struct Handle<S: Side> {
    out: mpsc::Sender<Bytes>,
    fin: mpsc::Sender<Bytes>,
    pending: Pending<S::In>,
    ids: Arc<AtomicU64>,
    closer: Closer,
    negotiated: Version,
}

impl<S: Side> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Self {
            out: self.out.clone(),
            fin: self.fin.clone(),
            pending: self.pending.clone(),
            ids: self.ids.clone(),
            closer: self.closer.clone(),
            negotiated: self.negotiated,
        }
    }
}

/// The requests waiting for a reply, shared by the handles (which add and cancel) and the
/// read loop (which answers, and empties it on close). Its size is the number of requests
/// in flight: a cancelled one leaves nothing behind.
struct Pending<M>(Arc<Mutex<PendingState<M>>>);

struct PendingState<M> {
    replies: HashMap<u64, oneshot::Sender<M>>,
    closed: bool,
}

impl<M> Clone for Pending<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M> Pending<M> {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(PendingState {
            replies: HashMap::new(),
            closed: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState<M>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for request `id`'s reply; `false` once the connection has closed.
    fn add(&self, id: u64, tx: oneshot::Sender<M>) -> bool {
        let mut s = self.lock();
        if s.closed {
            return false;
        }
        s.replies.insert(id, tx);
        true
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<M>> {
        self.lock().replies.remove(&id)
    }

    /// Fails every waiting request (their receivers see the sender dropped).
    fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.replies.clear();
    }

    fn len(&self) -> usize {
        self.lock().replies.len()
    }
}

/// The first close reason wins; everyone can wait for it.
#[derive(Clone)]
struct Closer(Arc<watch::Sender<Option<CloseReason>>>);

impl Closer {
    fn new() -> Self {
        Self(Arc::new(watch::channel(None).0))
    }

    fn close(&self, reason: CloseReason) {
        self.0.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(reason);
            true
        });
    }

    fn reason(&self) -> Option<CloseReason> {
        self.0.borrow().clone()
    }

    async fn closed(&self) -> CloseReason {
        let mut rx = self.0.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(CloseReason::Local),
            // The sender lives in `self`, so it cannot be gone.
            Err(_) => CloseReason::Local,
        }
    }

    fn closed_error(&self) -> RpcError {
        RpcError::Closed(self.reason().unwrap_or(CloseReason::Local))
    }
}

impl<S: Side> Connection<S> {
    /// Exchanges headers (ours is written at once, the peer's read concurrently, one byte at
    /// a time), validates the peer's, and starts the reader and writer tasks.
    pub async fn handshake<R, W>(
        reader: R,
        writer: W,
        versions: VersionList,
    ) -> Result<Self, HandshakeError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        Self::handshake_until(reader, writer, versions, std::future::pending()).await
    }

    /// [`Connection::handshake`], given up (with `handshake failed: cancelled`) when
    /// `cancel` completes first.
    pub async fn handshake_until<R, W>(
        mut reader: R,
        mut writer: W,
        versions: VersionList,
        cancel: impl Future<Output = ()>,
    ) -> Result<Self, HandshakeError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let ours = build_header(S::ROLE, &versions);
        let exchange = async {
            let write = async {
                writer.write_all(ours.as_bytes()).await?;
                writer.flush().await
            };
            let read = read_header(&mut reader);
            let (w, r) = tokio::join!(write, read);
            w.map_err(HandshakeError::Io)?;
            r
        };
        let line = tokio::select! {
            r = exchange => r?,
            () = cancel => return Err(HandshakeError::Cancelled),
        };
        let peer = validate_header(&line, S::ROLE.peer(), &versions)?;
        debug!(peer = %line, negotiated = %peer.negotiated, "codervpn handshake complete");
        Ok(Self::start(reader, writer, peer.negotiated))
    }

    fn start<R, W>(reader: R, writer: W, negotiated: Version) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let closer = Closer::new();
        let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
        let (fin_tx, fin_rx) = mpsc::channel(1);
        let pending = Pending::new();
        let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
        tokio::spawn(write_loop(writer, out_rx, fin_rx, closer.clone()).in_current_span());
        tokio::spawn(
            read_loop::<S, R>(reader, pending.clone(), in_tx, closer.clone()).in_current_span(),
        );
        Self {
            handle: Handle {
                out: out_tx,
                fin: fin_tx,
                pending,
                ids: Arc::new(AtomicU64::new(1)),
                closer,
                negotiated,
            },
            incoming: in_rx,
        }
    }

    pub fn handle(&self) -> &Handle<S> {
        &self.handle
    }

    pub fn negotiated(&self) -> Version {
        self.handle.negotiated
    }

    /// The next request or one-way message; `None` once the connection has closed.
    pub async fn next_incoming(&mut self) -> Option<Incoming<S::In>> {
        self.incoming.recv().await
    }

    pub fn into_parts(self) -> (Handle<S>, mpsc::Receiver<Incoming<S::In>>) {
        (self.handle, self.incoming)
    }
}

impl<S: Side> Handle<S> {
    pub fn negotiated(&self) -> Version {
        self.negotiated
    }

    /// Requests sent and still waiting for their reply (a cancelled one no longer counts).
    pub fn requests_in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Sends a request and waits for its reply. Dropping the future cancels the request;
    /// a reply that arrives later is dropped.
    pub async fn request(&self, mut msg: S::Out) -> Result<S::In, RpcError> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        *S::out_rpc(&mut msg) = Some(rpc::request(id));
        let frame = encode::<S>(&msg)?;
        let (tx, rx) = oneshot::channel();
        if !self.pending.add(id, tx) {
            return Err(self.closer.closed_error());
        }
        let guard = Unregister {
            pending: &self.pending,
            id,
        };
        self.enqueue(frame).await?;
        let reply = tokio::select! {
            // A reply that arrived just before the connection closed still counts.
            biased;
            r = rx => r.map_err(|_| self.closer.closed_error()),
            reason = self.closer.closed() => Err(RpcError::Closed(reason)),
        };
        drop(guard);
        reply
    }

    /// Sends a one-way message (no `rpc`), waiting for queue space.
    pub async fn notify(&self, mut msg: S::Out) -> Result<(), RpcError> {
        *S::out_rpc(&mut msg) = None;
        let frame = encode::<S>(&msg)?;
        self.enqueue(frame).await
    }

    /// Sends a one-way message unless the queue is full, in which case it is dropped.
    pub fn try_notify(&self, mut msg: S::Out) -> Result<(), RpcError> {
        *S::out_rpc(&mut msg) = None;
        let frame = encode::<S>(&msg)?;
        self.out.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RpcError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => self.closer.closed_error(),
        })
    }

    /// Answers the peer's request `id`.
    pub async fn reply(&self, id: u64, mut msg: S::Out) -> Result<(), RpcError> {
        *S::out_rpc(&mut msg) = Some(rpc::reply(id));
        let frame = encode::<S>(&msg)?;
        self.enqueue(frame).await
    }

    /// Writes `msg` as the reply to `id` and as the last frame of the connection, then
    /// closes it. Queued frames not yet written are discarded. Returns once closed.
    pub async fn send_final(&self, id: u64, mut msg: S::Out) -> Result<(), RpcError> {
        *S::out_rpc(&mut msg) = Some(rpc::reply(id));
        let frame = encode::<S>(&msg)?;
        if self.fin.try_send(frame).is_err() {
            return Err(self.closer.closed_error());
        }
        match self.closer.closed().await {
            CloseReason::Finished => Ok(()),
            other => Err(RpcError::Closed(other)),
        }
    }

    /// Closes both directions. Idempotent.
    pub fn close(&self) {
        self.closer.close(CloseReason::Local);
    }

    /// Waits until the connection has closed, and says why.
    pub async fn closed(&self) -> CloseReason {
        self.closer.closed().await
    }

    pub fn is_closed(&self) -> bool {
        self.closer.reason().is_some()
    }

    async fn enqueue(&self, frame: Bytes) -> Result<(), RpcError> {
        if self.is_closed() {
            return Err(self.closer.closed_error());
        }
        tokio::select! {
            r = self.out.send(frame) => r.map_err(|_| self.closer.closed_error()),
            reason = self.closer.closed() => Err(RpcError::Closed(reason)),
        }
    }
}

struct Unregister<'a, M> {
    pending: &'a Pending<M>,
    id: u64,
}

impl<M> Drop for Unregister<'_, M> {
    fn drop(&mut self) {
        self.pending.take(self.id);
    }
}

fn encode<S: Side>(msg: &S::Out) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::new();
    encode_frame(msg, S::OUT_NAME, &mut buf)?;
    Ok(buf.freeze())
}

async fn read_header<R: AsyncRead + Unpin>(reader: &mut R) -> Result<String, HandshakeError> {
    let mut header = HeaderReader::new();
    loop {
        let byte = match reader.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(HandshakeError::Eof);
            }
            Err(e) => return Err(HandshakeError::Io(e)),
        };
        if let Some(line) = header.push(byte)? {
            return Ok(line);
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut out: mpsc::Receiver<Bytes>,
    mut fin: mpsc::Receiver<Bytes>,
    closer: Closer,
) {
    let mut fin_open = true;
    let reason = loop {
        let (frame, last) = tokio::select! {
            biased;
            _ = closer.closed() => break None,
            f = fin.recv(), if fin_open => match f {
                Some(f) => (f, true),
                None => {
                    fin_open = false;
                    continue;
                }
            },
            f = out.recv() => match f {
                Some(f) => (f, false),
                // Every handle is gone: nobody can send any more.
                None => break Some(CloseReason::Local),
            },
        };
        let written = tokio::select! {
            biased;
            _ = closer.closed() => break None,
            r = writer.write_all(&frame) => r,
        };
        if let Err(e) = written {
            warn!(error = %e, "codervpn write failed; closing connection");
            break Some(CloseReason::Error(format!("write failed: {e}")));
        }
        trace!(len = frame.len(), last, "frame written");
        if last {
            break Some(CloseReason::Finished);
        }
    };
    let _ = writer.shutdown().await;
    drop(writer);
    if let Some(reason) = reason {
        closer.close(reason);
    }
}

async fn read_loop<S: Side, R: AsyncRead + Unpin>(
    mut reader: R,
    pending: Pending<S::In>,
    incoming: mpsc::Sender<Incoming<S::In>>,
    closer: Closer,
) {
    let mut decoder = FrameDecoder::new();
    let reason = 'outer: loop {
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    error!(critical = true, error = %e, "message length exceeds max; closing connection");
                    break 'outer CloseReason::Error(e.to_string());
                }
            };
            let msg: S::In = match decode_message(&frame, S::IN_NAME) {
                Ok(m) => m,
                Err(e) => {
                    error!(critical = true, error = %e, "failed to unmarshal message; closing connection");
                    break 'outer CloseReason::Error(e.to_string());
                }
            };
            let kind = S::in_kind(&msg);
            let item = match rpc::classify(S::in_rpc(&msg)) {
                Dispatch::Reply(id) => {
                    match pending.take(id) {
                        Some(tx) => {
                            let _ = tx.send(msg);
                        }
                        None => debug!(id, kind, "reply to no pending request dropped"),
                    }
                    continue;
                }
                Dispatch::Invalid => {
                    error!(kind, "message with an empty rpc (both ids 0) dropped");
                    continue;
                }
                Dispatch::Request(id) => Incoming::Request { id, msg },
                Dispatch::OneWay => Incoming::OneWay(msg),
            };
            trace!(kind, "message received");
            tokio::select! {
                biased;
                _ = closer.closed() => break 'outer CloseReason::Local,
                r = incoming.send(item) => {
                    if r.is_err() {
                        debug!(kind, "nobody reads incoming messages; dropped");
                    }
                }
            }
        }
        let buf = decoder.buffer();
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            _ = closer.closed() => break CloseReason::Local,
            read = reader.read_buf(decoder.buffer()) => match read {
                Ok(0) => match decoder.finish() {
                    Ok(()) => break CloseReason::PeerClosed,
                    Err(e) => {
                        warn!(error = %e, "peer closed the stream mid-frame");
                        break CloseReason::Error(e.to_string());
                    }
                },
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "codervpn read failed; closing connection");
                    break CloseReason::Error(format!("read failed: {e}"));
                }
            },
        }
    };
    debug!(reason = %reason, "codervpn connection reader done");
    closer.close(reason);
    pending.close();
    drop(reader);
}
