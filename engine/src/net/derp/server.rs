//! The tokio shell of the DERP server: a relay-table task that owns who is connected, and
//! one task per connection running a [`ServerConn`] (Go: `derp_server.go`, `derphttp`).
//!
//! Connections talk to the table over a bounded channel. The table publishes an immutable
//! route snapshot (key → the active connection's queue) through a `watch` channel, so
//! forwarding a packet is one lookup and one `try_send` into the destination's queue —
//! no lock shared between tasks. Entry points, from most to least work done here:
//! [`DerpServer::listen`] (accept loop), [`DerpServer::serve_http`] (reads the HTTP/1.1
//! upgrade request itself), [`DerpServer::serve_upgraded`] / [`DerpServer::serve_websocket`]
//! (for an HTTP server such as hyper that has already answered `101`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::{Instrument, debug, info_span, trace, warn};

use super::http::{self, BadRequest, HttpError, UpgradeKind};
use super::keys::{NodePrivateKey, NodePublicKey, ServerInfo};
use super::server_core::{
    KEEP_ALIVE_MAX_JITTER, ServerConn, ServerConnConfig, ServerConnError, ServerConnEvent,
};
use super::server_table::{
    ClientSummary, ConnQueue, QueuedBytes, Routes, TableCmd, ToConn, run_table,
};
use super::table::ConnId;
use super::transport::{Read, Timer, Transport};

/// Packets queued per destination connection (Coder's `perClientSendQueueDepth`); more
/// are dropped at the tail.
pub const PER_CLIENT_QUEUE: usize = 512;
const TABLE_QUEUE: usize = 1024;
/// A client that does not take a write within this long is disconnected (Go: `writeTimeout`).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to send its HTTP request head (a client that connects and
/// says nothing, or a byte now and then, is answered 408 and dropped).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refused HTTP request: {status} {message}")]
    Refused { status: u16, message: String },
    #[error("malformed HTTP upgrade request: {0}")]
    Http(#[from] HttpError),
    #[error("client connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("WebSocket setup failed: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    #[error(transparent)]
    Protocol(#[from] ServerConnError),
    #[error("client did not read for {WRITE_TIMEOUT:?}; disconnected")]
    WriteTimeout,
    #[error("client did not send its request head within {0:?}; disconnected")]
    HeadTimeout(Duration),
    #[error("the DERP server is shut down")]
    ServerClosed,
}

/// Handle to a running DERP server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DerpServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    private_key: NodePrivateKey,
    server_info: ServerInfo,
    table: mpsc::Sender<TableCmd>,
    routes: watch::Receiver<Arc<Routes>>,
    next_conn: AtomicU64,
    /// Fault injection: relayed packets dropped per 2^32 (0 = none).
    drop_per_2_32: std::sync::atomic::AtomicU32,
    /// [`HEAD_TIMEOUT`] unless set, in milliseconds.
    head_timeout_ms: AtomicU64,
    /// Packets dropped by that fault.
    dropped_by_fault: AtomicU64,
}

impl DerpServer {
    /// Starts a server (its table task) with `private_key`. Needs a tokio runtime.
    pub fn new(private_key: NodePrivateKey) -> Self {
        Self::with_server_info(private_key, ServerInfo::default())
    }

    /// [`Self::new`] announcing `server_info` (e.g. a token bucket) to clients.
    pub fn with_server_info(private_key: NodePrivateKey, server_info: ServerInfo) -> Self {
        let (table_tx, table_rx) = mpsc::channel(TABLE_QUEUE);
        let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
        let span = info_span!("derp_server", key = %private_key.public_key().short());
        tokio::spawn(run_table(table_rx, routes_tx).instrument(span));
        Self {
            inner: Arc::new(Inner {
                private_key,
                server_info,
                table: table_tx,
                routes: routes_rx,
                next_conn: AtomicU64::new(1),
                drop_per_2_32: std::sync::atomic::AtomicU32::new(0),
                head_timeout_ms: AtomicU64::new(millis(HEAD_TIMEOUT)),
                dropped_by_fault: AtomicU64::new(0),
            }),
        }
    }

    /// The server's public key (sent in the server-key frame and `Derp-Public-Key`).
    pub fn public_key(&self) -> NodePublicKey {
        self.inner.private_key.public_key()
    }

    /// Accepts TCP connections and serves each with [`Self::serve_http`], until the server
    /// is closed or accepting fails.
    pub async fn listen(&self, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = self.inner.table.closed() => return Ok(()),
            };
            let (stream, peer) = accepted?;
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let span = info_span!("derp_conn", %peer);
            tokio::spawn(
                async move {
                    if let Err(e) = server.serve_http(stream).await {
                        debug!(error = %e, "DERP connection ended");
                    }
                }
                .instrument(span),
            );
        }
    }

    /// Reads an HTTP/1.1 request from `stream`; answers `Upgrade: DERP` (or WebSocket with
    /// subprotocol `derp`) with `101` and serves DERP; refuses anything else (`426`, …).
    pub async fn serve_http<S>(&self, mut stream: S) -> Result<(), ServeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut buf = Vec::with_capacity(1024);
        let limit = Duration::from_millis(self.inner.head_timeout_ms.load(Ordering::Relaxed));
        let head = tokio::time::timeout(limit, self.read_head(&mut stream, &mut buf)).await;
        let end = match head {
            Ok(Ok(Some(end))) => end,
            Ok(Ok(None)) => return Ok(()), // closed before asking anything
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let answer = http::error_response(408, "Request Timeout", "");
                let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&answer)).await;
                return Err(ServeError::HeadTimeout(limit));
            }
        };
        self.serve_head(stream, &buf, end).await
    }

    /// How long clients get to send their request head from now on ([`HEAD_TIMEOUT`] by
    /// default).
    pub fn set_head_timeout(&self, limit: Duration) {
        self.inner
            .head_timeout_ms
            .store(millis(limit), Ordering::Relaxed);
    }

    /// Reads into `buf` until the end of an HTTP head: its length, or `None` if the client
    /// closed first. A head over [`http::MAX_HEAD_LEN`] is answered 431.
    async fn read_head<S>(
        &self,
        stream: &mut S,
        buf: &mut Vec<u8>,
    ) -> Result<Option<usize>, ServeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        loop {
            if let Some(end) = http::head_end(buf) {
                return Ok(Some(end));
            }
            if buf.len() > http::MAX_HEAD_LEN {
                stream
                    .write_all(&http::error_response(
                        431,
                        "Request Header Fields Too Large",
                        "",
                    ))
                    .await?;
                return Err(HttpError::HeadTooLong.into());
            }
            if stream.read_buf(buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Answers the request whose head is `buf[..end]` (what follows it is the client's
    /// first bytes after the upgrade).
    async fn serve_head<S>(&self, mut stream: S, buf: &[u8], end: usize) -> Result<(), ServeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let leftover = Bytes::copy_from_slice(&buf[end..]);
        match http::parse_upgrade_request(&buf[..end]) {
            Ok(UpgradeKind::Derp { fast_start }) => {
                if !fast_start {
                    stream
                        .write_all(&http::derp_switching_response(&self.public_key()))
                        .await?;
                }
                self.serve_upgraded(stream, leftover).await
            }
            Ok(UpgradeKind::WebSocket { key }) => {
                stream
                    .write_all(&http::websocket_switching_response(&key))
                    .await?;
                let ws = WebSocketStream::from_partially_read(
                    stream,
                    leftover.to_vec(),
                    Role::Server,
                    None,
                )
                .await;
                self.serve_websocket(ws).await
            }
            Err(BadRequest::Refused(r)) => {
                stream
                    .write_all(&http::error_response(r.status, r.reason, &r.message))
                    .await?;
                let _ = stream.shutdown().await;
                Err(ServeError::Refused {
                    status: r.status,
                    message: r.message,
                })
            }
            Err(BadRequest::Malformed(e)) => Err(e.into()),
        }
    }

    /// Serves a stream whose `101 Switching Protocols` (Upgrade: DERP) has been sent;
    /// `leftover` is anything read past the request head.
    pub async fn serve_upgraded<S>(&self, stream: S, leftover: Bytes) -> Result<(), ServeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.serve_transport(Transport::stream(stream), leftover)
            .await
    }

    /// Serves an accepted WebSocket (subprotocol `derp`).
    pub async fn serve_websocket<S>(&self, ws: WebSocketStream<S>) -> Result<(), ServeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.serve_transport(Transport::websocket(ws), Bytes::new())
            .await
    }

    /// Sends a health frame to every connection of `key` (empty = healthy again).
    pub async fn set_health(&self, key: NodePublicKey, problem: &str) -> Result<(), ServeError> {
        let cmd = TableCmd::Health {
            key,
            problem: problem.to_owned(),
        };
        self.inner
            .table
            .send(cmd)
            .await
            .map_err(|_| ServeError::ServerClosed)
    }

    /// Tells every client the server is restarting.
    pub async fn announce_restart(
        &self,
        reconnect_in: Duration,
        try_for: Duration,
    ) -> Result<(), ServeError> {
        let cmd = TableCmd::Restarting {
            reconnect_in,
            try_for,
        };
        self.inner
            .table
            .send(cmd)
            .await
            .map_err(|_| ServeError::ServerClosed)
    }

    /// Fault injection for tests: drop this fraction (0.0–1.0) of the packets clients
    /// send through the relay, at random.
    pub fn set_drop_fraction(&self, fraction: f64) {
        let v = (fraction.clamp(0.0, 1.0) * f64::from(u32::MAX)) as u32;
        self.inner.drop_per_2_32.store(v, Ordering::Relaxed);
    }

    /// Packets dropped by [`Self::set_drop_fraction`] so far.
    pub fn dropped_by_fault(&self) -> u64 {
        self.inner.dropped_by_fault.load(Ordering::Relaxed)
    }

    /// The connected clients, ordered by connection number.
    pub async fn clients(&self) -> Result<Vec<ClientSummary>, ServeError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .table
            .send(TableCmd::Clients { reply })
            .await
            .map_err(|_| ServeError::ServerClosed)?;
        rx.await.map_err(|_| ServeError::ServerClosed)
    }

    /// Closes every registered connection and stops the table and [`Self::listen`].
    pub async fn close(&self) {
        let _ = self.inner.table.send(TableCmd::Close).await;
    }

    async fn serve_transport<S>(
        &self,
        mut transport: Transport<S>,
        leftover: Bytes,
    ) -> Result<(), ServeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let jitter = Duration::from_millis(
            u64::from(OsRng.next_u32()) % KEEP_ALIVE_MAX_JITTER.as_millis() as u64,
        );
        let config = ServerConnConfig {
            keep_alive_jitter: jitter,
            server_info: self.inner.server_info.clone(),
        };
        let mut core = ServerConn::new(self.inner.private_key.clone(), config, Instant::now());
        let (tx, rx) = mpsc::channel(PER_CLIENT_QUEUE);
        let queue = ConnQueue::new(tx);
        let mut state = ConnState {
            conn,
            queued: queue.bytes(),
            tx: Some(queue),
            rx,
            key: None,
            noted: HashMap::new(),
        };
        let result = async {
            if !leftover.is_empty() {
                core.handle_input(Instant::now(), &leftover)?;
            }
            self.run_conn(&mut transport, &mut core, &mut state).await
        }
        .await;
        if let Some(key) = state.key {
            let _ = self
                .inner
                .table
                .send(TableCmd::Unregister { key, conn })
                .await;
        }
        if let Ok(()) = result {
            transport.shutdown().await;
        }
        result
    }

    async fn run_conn<S>(
        &self,
        transport: &mut Transport<S>,
        core: &mut ServerConn,
        st: &mut ConnState,
    ) -> Result<(), ServeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut timer = Timer::new();
        loop {
            while let Some(ev) = core.poll_event() {
                self.handle_event(core, st, ev).await?;
            }
            while let Some(bytes) = core.poll_transmit() {
                // Go: a client that does not read within writeTimeout is dropped.
                match tokio::time::timeout(WRITE_TIMEOUT, transport.write(bytes)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(ServeError::WriteTimeout),
                }
            }
            timer.arm(core.poll_timeout());
            tokio::select! {
                r = transport.read() => match r? {
                    Read::Data(b) => core.handle_input(Instant::now(), &b)?,
                    Read::Eof => return Ok(()),
                },
                msg = st.rx.recv() => {
                    // Take what else is queued too, so one write carries the batch.
                    let batch = std::iter::once(msg).chain(std::iter::from_fn(|| st.rx.try_recv().ok().map(Some)));
                    for msg in batch.take(64) {
                        match msg {
                            None | Some(ToConn::Close) => return Ok(()),
                            Some(m) => {
                                if let ToConn::Packet { data, .. } = &m {
                                    st.queued.taken(data.len());
                                }
                                apply(core, m);
                            }
                        }
                    }
                },
                () = timer.wait() => core.handle_timeout(Instant::now())?,
            }
        }
    }

    async fn handle_event(
        &self,
        core: &mut ServerConn,
        st: &mut ConnState,
        ev: ServerConnEvent,
    ) -> Result<(), ServeError> {
        match ev {
            ServerConnEvent::Verified { key, info: _ } => {
                let Some(tx) = st.tx.take() else {
                    return Ok(());
                };
                let (done, registered) = oneshot::channel();
                let cmd = TableCmd::Register {
                    key,
                    conn: st.conn,
                    tx,
                    done,
                };
                self.inner
                    .table
                    .send(cmd)
                    .await
                    .map_err(|_| ServeError::ServerClosed)?;
                // Routes must include us before the client learns it is connected.
                registered.await.map_err(|_| ServeError::ServerClosed)?;
                st.key = Some(key);
            }
            ServerConnEvent::SendPacket { dst, packet } => {
                let Some(src) = st.key else { return Ok(()) };
                let drop = self.inner.drop_per_2_32.load(Ordering::Relaxed);
                if drop > 0 && OsRng.next_u32() < drop {
                    self.inner.dropped_by_fault.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                let route = {
                    let routes = self.inner.routes.borrow();
                    routes
                        .map
                        .get(&dst)
                        .map(|r| (r.conn, r.tx.try_send_packet(src, packet.clone())))
                };
                match route {
                    None => {
                        core.note_unknown_destination(Instant::now(), dst, &packet);
                    }
                    Some((dst_conn, sent)) => {
                        if let Err(why) = sent {
                            trace!(dst = %dst.short(), why, "derp drop");
                        }
                        if st.noted.get(&dst) != Some(&dst_conn) {
                            st.noted.insert(dst, dst_conn);
                            let cmd = TableCmd::NoteSent { src, dst, dst_conn };
                            self.inner
                                .table
                                .send(cmd)
                                .await
                                .map_err(|_| ServeError::ServerClosed)?;
                        }
                    }
                }
            }
            ServerConnEvent::NotePreferred { preferred } => {
                let cmd = TableCmd::Preferred {
                    conn: st.conn,
                    preferred,
                };
                self.inner
                    .table
                    .send(cmd)
                    .await
                    .map_err(|_| ServeError::ServerClosed)?;
            }
        }
        Ok(())
    }
}

struct ConnState {
    conn: ConnId,
    /// Our queue's byte count (it goes down as we take packets).
    queued: QueuedBytes,
    /// Our queue's sender, until it is handed to the table at registration.
    tx: Option<ConnQueue>,
    rx: mpsc::Receiver<ToConn>,
    key: Option<NodePublicKey>,
    /// The destination connection last reported to the table per destination key.
    noted: HashMap<NodePublicKey, ConnId>,
}

fn apply(core: &mut ServerConn, msg: ToConn) {
    match msg {
        ToConn::Packet { src, data } => {
            if let Err(e) = core.queue_packet(&src, &data) {
                debug!(error = %e, "dropping packet");
            }
        }
        ToConn::PeerGone { key, reason } => core.queue_peer_gone(key, reason),
        ToConn::Health(problem) => {
            if let Err(e) = core.queue_health(&problem) {
                warn!(error = %e, "cannot send health");
            }
        }
        ToConn::Restarting {
            reconnect_in,
            try_for,
        } => core.queue_restarting(reconnect_in, try_for),
        ToConn::Close => {}
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
