//! The tokio shell around [`DerpClient`]: dials the server, performs the HTTP upgrade (or
//! the WebSocket variant), runs the core over the stream, and reconnects with backoff when
//! the connection drops (tailnet.md §11 "DERP transport", §13.3). `https`/`wss` URLs are
//! dialed over rustls with the trust of [`crate::transport::tls`] unless the caller brings its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_core::{OsRng, RngCore};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span, trace, warn};
use url::Url;

use super::client_core::{ClientConfig, ClientEvent, DerpClient, DerpClientError};
use super::dial::{self, ConnectError, ConnectOptions, DIAL_TIMEOUT, DerpTransport};
use super::http::HttpError;
use super::keys::{NodePrivateKey, NodePublicKey};
use super::transport::{Read, Timer, Transport};
use crate::transport::Stream;

/// Longest reconnect delay (Go's magicsock: `backoff.NewBackoff(…, 5*time.Second)`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
const COMMAND_QUEUE: usize = 1024;
const EVENT_QUEUE: usize = 1024;

/// What the connection reports.
#[derive(Debug, Clone)]
pub enum DerpEvent {
    /// Something the server said (packets, peer gone, health, …).
    Relay(ClientEvent),
    /// The connection dropped; the next attempt starts in `retry_in`.
    Disconnected {
        error: Arc<ConnectError>,
        retry_in: Duration,
    },
}

/// A live client: [`DerpHandle`] to send, `events` to receive.
#[derive(Debug)]
pub struct DerpConnection {
    pub handle: DerpHandle,
    pub events: mpsc::Receiver<DerpEvent>,
}

/// Sends through the connection. Cheap to clone; the connection (and its reconnect loop)
/// ends when every handle is dropped or [`DerpHandle::close`] is called.
#[derive(Debug, Clone)]
pub struct DerpHandle {
    tx: mpsc::Sender<Command>,
    public_key: NodePublicKey,
    counters: Arc<ConnCounters>,
}

/// The far end of a [`DerpHandle::detached`] handle.
#[cfg(any(test, feature = "test-servers"))]
#[derive(Debug)]
pub struct DetachedRelay(mpsc::Receiver<Command>);

#[cfg(any(test, feature = "test-servers"))]
impl DetachedRelay {
    /// The next packet sent on the handle (other commands are dropped), if any.
    pub fn try_recv(&mut self) -> Option<(NodePublicKey, Bytes)> {
        loop {
            match self.0.try_recv().ok()? {
                Command::Send { to, packet } => return Some((to, packet)),
                _ => continue,
            }
        }
    }
}

/// How a connection has fared so far (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DerpConnStats {
    /// The server's handshake completed on the current connection.
    pub connected: bool,
    /// Handshakes completed, the first included: reconnects are one fewer.
    pub connects: u64,
}

impl DerpConnStats {
    /// Connections after the first.
    pub fn reconnects(&self) -> u64 {
        self.connects.saturating_sub(1)
    }
}

/// Shared between the connection task and its handles.
#[derive(Debug, Default)]
struct ConnCounters {
    connected: AtomicBool,
    connects: AtomicU64,
}

/// The connection task is gone.
#[derive(Debug, thiserror::Error)]
#[error("the DERP connection is closed")]
pub struct DerpClosed;

#[derive(Debug)]
enum Command {
    Send {
        to: NodePublicKey,
        packet: Bytes,
    },
    Preferred(bool),
    Ping([u8; 8]),
    /// Ping, and reconnect at once unless the pong comes within the duration.
    Probe(Duration),
    Close,
}

/// A write to the server that takes longer than this ends the connection (upstream's
/// `derp.Client` closes it after 5 s).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a probe waits for its pong (upstream's post-rebind DERP ping: 3 s).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl DerpHandle {
    /// Queues `packet` for `to`. Packets sent while reconnecting are dropped (DERP is a
    /// datagram relay; WireGuard retransmits).
    pub async fn send(&self, to: NodePublicKey, packet: Bytes) -> Result<(), DerpClosed> {
        self.tx
            .send(Command::Send { to, packet })
            .await
            .map_err(|_| DerpClosed)
    }

    /// Like [`Self::send`], but drops the packet (returning `Ok(false)`) when the queue
    /// is full instead of waiting.
    pub fn try_send(&self, to: NodePublicKey, packet: Bytes) -> Result<bool, DerpClosed> {
        match self.tx.try_send(Command::Send { to, packet }) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DerpClosed),
        }
    }

    /// A handle with no connection behind it, for simulations that play the relay
    /// themselves: what is sent on it comes out of the returned [`DetachedRelay`].
    #[cfg(any(test, feature = "test-servers"))]
    pub fn detached(public_key: NodePublicKey) -> (Self, DetachedRelay) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let handle = Self {
            tx,
            public_key,
            counters: Arc::default(),
        };
        (handle, DetachedRelay(rx))
    }

    /// Sets whether this server is the home region (sent now and after every reconnect).
    pub async fn set_preferred(&self, preferred: bool) -> Result<(), DerpClosed> {
        self.tx
            .send(Command::Preferred(preferred))
            .await
            .map_err(|_| DerpClosed)
    }

    /// Pings the server; the answer arrives as [`ClientEvent::Pong`].
    pub async fn ping(&self, data: [u8; 8]) -> Result<(), DerpClosed> {
        self.tx
            .send(Command::Ping(data))
            .await
            .map_err(|_| DerpClosed)
    }

    /// Checks the connection is alive (after a wake): a ping that must be answered within
    /// `timeout`, else the connection is dropped and dialled again at once (upstream's
    /// `maybeCloseDERPsOnRebind`). Never waits.
    pub fn probe(&self, timeout: Duration) -> Result<(), DerpClosed> {
        match self.tx.try_send(Command::Probe(timeout)) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DerpClosed),
        }
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(&self) {
        let _ = self.tx.send(Command::Close).await;
    }

    /// This client's node public key.
    pub fn public_key(&self) -> NodePublicKey {
        self.public_key
    }

    /// Whether the connection is up, and how often it connected.
    pub fn stats(&self) -> DerpConnStats {
        DerpConnStats {
            connected: self.counters.connected.load(Ordering::Relaxed),
            connects: self.counters.connects.load(Ordering::Relaxed),
        }
    }
}

/// Connects with `GET /derp` + `Upgrade: DERP`, sending `headers` (tailnet.md §2) on every
/// attempt. Returns once the upgrade succeeded; the handshake completes in the background
/// ([`ClientEvent::Connected`]).
pub async fn connect(
    url: &Url,
    headers: &[(String, String)],
    private_key: NodePrivateKey,
) -> Result<DerpConnection, ConnectError> {
    connect_with(url, headers, private_key, ConnectOptions::default()).await
}

/// [`connect`] with options (WebSocket, client info, home region).
pub async fn connect_with(
    url: &Url,
    headers: &[(String, String)],
    private_key: NodePrivateKey,
    options: ConnectOptions,
) -> Result<DerpConnection, ConnectError> {
    let mut sup = Supervisor {
        url: url.clone(),
        headers: headers.to_vec(),
        private_key,
        options,
        backoff: Backoff::default(),
        restart_hint: None,
        counters: Arc::default(),
        probe: None,
    };
    let first = sup.dial_with_fallback().await?;
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let public_key = sup.private_key.public_key();
    let span = info_span!("derp_client", url = %url, key = %public_key.short());
    let counters = sup.counters.clone();
    tokio::spawn(sup.run(first, rx, ev_tx).instrument(span));
    Ok(DerpConnection {
        handle: DerpHandle {
            tx,
            public_key,
            counters,
        },
        events: ev_rx,
    })
}

type Conn = (Transport<Stream>, DerpClient);

struct Supervisor {
    url: Url,
    headers: Vec<(String, String)>,
    private_key: NodePrivateKey,
    options: ConnectOptions,
    backoff: Backoff,
    restart_hint: Option<Duration>,
    counters: Arc<ConnCounters>,
    /// A probe in flight: its ping data, and when it gives up.
    probe: Option<([u8; 8], Instant, Duration)>,
}

enum End {
    /// Every handle is gone, or close was asked for.
    Shutdown,
    Failed(ConnectError),
}

impl Supervisor {
    async fn run(
        mut self,
        first: Conn,
        mut rx: mpsc::Receiver<Command>,
        ev: mpsc::Sender<DerpEvent>,
    ) {
        let mut conn = Some(first);
        loop {
            let error = match conn.take() {
                Some(c) => match self.serve(c, &mut rx, &ev).await {
                    End::Shutdown => return,
                    End::Failed(e) => e,
                },
                None => match self.dial_with_fallback().await {
                    Ok(c) => {
                        self.backoff.reset();
                        conn = Some(c);
                        continue;
                    }
                    Err(e) => e,
                },
            };
            let retry_in = self
                .restart_hint
                .take()
                .unwrap_or_else(|| self.backoff.next_delay());
            self.counters.connected.store(false, Ordering::Relaxed);
            warn!(error = %error, ?retry_in, "DERP connection lost; reconnecting");
            let event = DerpEvent::Disconnected {
                error: Arc::new(error),
                retry_in,
            };
            if ev.try_send(event).is_err() {
                trace!("event queue full or closed; disconnect not reported");
            }
            let wake = tokio::time::sleep(retry_in);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    () = &mut wake => break,
                    cmd = rx.recv() => match cmd {
                        None | Some(Command::Close) => return,
                        Some(Command::Preferred(p)) => self.options.preferred = p,
                        Some(Command::Send { to, .. }) => trace!(to = %to.short(), "dropping packet while reconnecting"),
                        Some(Command::Ping(_)) => {}
                        // A wake while waiting to redial: the network may be back; dial now.
                        Some(Command::Probe(_)) => break,
                    },
                }
            }
        }
    }

    async fn dial_with_fallback(&mut self) -> Result<Conn, ConnectError> {
        match self.dial().await {
            Err(ConnectError::Http {
                source: HttpError::NotSwitching { status, .. },
                url,
            }) if (400..500).contains(&status)
                && self.options.transport == DerpTransport::Upgrade =>
            {
                warn!(status, %url, "DERP upgrade refused; switching to WebSocket");
                self.options.transport = DerpTransport::WebSocket;
                self.dial().await
            }
            other => other,
        }
    }

    async fn dial(&self) -> Result<Conn, ConnectError> {
        let url = self.url.to_string();
        match tokio::time::timeout(DIAL_TIMEOUT, self.dial_inner()).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout {
                url,
                after: DIAL_TIMEOUT,
            }),
        }
    }

    async fn dial_inner(&self) -> Result<Conn, ConnectError> {
        let dialed = dial::open(&self.url, &self.headers, &self.options).await?;
        let transport = dialed.transport;
        debug!(transport = transport.kind(), "DERP connection upgraded");
        let config = ClientConfig {
            info: self.options.info.clone(),
            expected_server_key: dialed.server_key,
        };
        let now = Instant::now();
        let mut core = DerpClient::new(self.private_key.clone(), config, now);
        let protocol = |source| ConnectError::Protocol {
            url: self.url.to_string(),
            source,
        };
        if self.options.preferred {
            core.note_preferred(true).map_err(protocol)?;
        }
        if !dialed.leftover.is_empty() {
            core.handle_input(now, &dialed.leftover).map_err(protocol)?;
        }
        Ok((transport, core))
    }

    /// Runs one connection until it fails or the caller is done.
    async fn serve(
        &mut self,
        conn: Conn,
        rx: &mut mpsc::Receiver<Command>,
        ev: &mpsc::Sender<DerpEvent>,
    ) -> End {
        let (mut transport, mut core) = conn;
        let url = self.url.to_string();
        let mut timer = Timer::new();
        self.probe = None;
        let result = 'conn: loop {
            while let Some(bytes) = core.poll_transmit() {
                match tokio::time::timeout(WRITE_TIMEOUT, transport.write(bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(source)) => break 'conn End::Failed(ConnectError::Io { url, source }),
                    Err(_) => {
                        break 'conn End::Failed(ConnectError::WriteTimeout {
                            url,
                            after: WRITE_TIMEOUT,
                        });
                    }
                }
            }
            while let Some(e) = core.poll_event() {
                match e {
                    ClientEvent::Restarting { reconnect_in, .. } => {
                        self.restart_hint = Some(reconnect_in);
                    }
                    ClientEvent::Connected { .. } => {
                        self.counters.connected.store(true, Ordering::Relaxed);
                        self.counters.connects.fetch_add(1, Ordering::Relaxed);
                    }
                    ClientEvent::Pong { data } if self.probe.is_some_and(|(d, ..)| d == data) => {
                        self.probe = None;
                        debug!("DERP probe answered; the connection is alive");
                        continue;
                    }
                    _ => {}
                }
                // Keep taking commands while the consumer is slow, so that a consumer
                // blocked on `send` cannot deadlock with us.
                let permit = loop {
                    tokio::select! {
                        permit = ev.reserve() => break permit.ok(),
                        cmd = rx.recv() => if let Some(end) = self.command(&mut core, cmd) { break 'conn end },
                    }
                };
                if let Some(permit) = permit {
                    permit.send(DerpEvent::Relay(e));
                }
            }
            if core.has_transmit() {
                continue;
            }
            let probe_deadline = self.probe.map(|(_, at, _)| at);
            timer.arm(match (core.poll_timeout(), probe_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            });
            tokio::select! {
                r = transport.read() => match r {
                    Ok(Read::Data(b)) => {
                        if let Err(source) = core.handle_input(Instant::now(), &b) {
                            break End::Failed(ConnectError::Protocol { url, source });
                        }
                    }
                    Ok(Read::Eof) => break End::Failed(ConnectError::Eof { url }),
                    Err(source) => break End::Failed(ConnectError::Io { url, source }),
                },
                cmd = rx.recv() => {
                    if let Some(end) = self.command(&mut core, cmd) { break end; }
                    // Batch whatever else is queued before writing.
                    for _ in 0..64 {
                        let Ok(cmd) = rx.try_recv() else { break };
                        if let Some(end) = self.command(&mut core, Some(cmd)) { break 'conn end; }
                    }
                },
                () = timer.wait() => {
                    if let Some((_, at, after)) = self.probe
                        && at <= Instant::now()
                    {
                        self.probe = None;
                        self.restart_hint = Some(Duration::ZERO);
                        break End::Failed(ConnectError::Stale { url, after });
                    }
                    if let Err(source) = core.handle_timeout(Instant::now()) {
                        break End::Failed(ConnectError::Protocol { url, source });
                    }
                }
            }
        };
        if let End::Shutdown = result {
            transport.shutdown().await;
        }
        result
    }

    /// Applies a command; `Some` ends the connection.
    fn command(&mut self, core: &mut DerpClient, cmd: Option<Command>) -> Option<End> {
        let res = match cmd {
            None | Some(Command::Close) => return Some(End::Shutdown),
            Some(Command::Send { to, packet }) => core.send_packet(to, &packet),
            Some(Command::Preferred(p)) => {
                self.options.preferred = p;
                core.note_preferred(p)
            }
            Some(Command::Ping(d)) => core.send_ping(d),
            Some(Command::Probe(timeout)) => {
                if self.probe.is_some() {
                    return None;
                }
                let mut data = [0u8; 8];
                OsRng.fill_bytes(&mut data);
                self.probe = Some((data, Instant::now() + timeout, timeout));
                core.send_ping(data)
            }
        };
        match res {
            Ok(()) => None,
            // An oversize packet is the caller's mistake, not the connection's.
            Err(DerpClientError::PacketTooLarge { len }) => {
                debug!(len, "dropping oversize packet");
                None
            }
            Err(source) => Some(End::Failed(ConnectError::Protocol {
                url: self.url.to_string(),
                source,
            })),
        }
    }
}

/// Go magicsock's reconnect backoff: n² × 10 ms, capped at [`MAX_BACKOFF`], times a random
/// factor in [0.5, 1.5).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay after one more consecutive failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let factor = 0.5 + f64::from(OsRng.next_u32()) / (f64::from(u32::MAX) + 1.0);
        self.delay(factor)
    }

    /// The delay for the current failure count and a factor in [0.5, 1.5).
    pub fn delay(&self, factor: f64) -> Duration {
        let n = u64::from(self.failures);
        let base = Duration::from_millis(n.saturating_mul(n).saturating_mul(10)).min(MAX_BACKOFF);
        base.mul_f64(factor)
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_as_n_squared_times_10ms_up_to_5s() {
        let mut b = Backoff::default();
        let mut at_factor_1 = Vec::new();
        for _ in 0..25 {
            let d = b.next_delay();
            let base = b.delay(1.0);
            assert!(
                d >= base.mul_f64(0.5) && d < base.mul_f64(1.5),
                "{d:?} vs {base:?}"
            );
            at_factor_1.push(base.as_millis());
        }
        assert_eq!(&at_factor_1[..4], &[10, 40, 90, 160]);
        assert_eq!(at_factor_1[24], 5000);
        b.reset();
        assert_eq!(b.delay(1.0), Duration::ZERO);
    }
}
