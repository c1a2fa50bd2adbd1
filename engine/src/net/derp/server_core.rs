//! One server-side DERP connection as a value you feed (Go: `derp/derp_server.go`,
//! `accept` and `sclient`). It greets the client, verifies its sealed client info, answers
//! pings, sends keep-alives, and turns the client's frames into [`ServerConnEvent`]s; the
//! relay table ([`super::table`]) decides where packets go.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{debug, trace};

use super::decoder::{FrameDecoder, Policy};
use super::frame::{self, Frame, FrameError, PeerGoneReason};
use super::keys::{
    BoxError, ClientInfo, InfoJsonError, KEY_LEN, NodePrivateKey, NodePublicKey, ServerInfo,
};

/// Keep-alive period before jitter (Go: `keepAlive`).
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Keep-alive jitter is drawn from `[0, KEEP_ALIVE_MAX_JITTER)`.
pub const KEEP_ALIVE_MAX_JITTER: Duration = Duration::from_secs(5);
/// Time a client has to present its client info (Go: 10-second deadline in `accept`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Disco magic `TS💬`: peer-gone "not here" replies only answer disco packets.
const DISCO_MAGIC: [u8; 6] = *b"TS\xf0\x9f\x92\xac";
/// Shortest disco packet: magic + sender disco key + nonce (Go: `LooksLikeDiscoWrapper`).
const DISCO_MIN_LEN: usize = 6 + 32 + 24;

/// Per-connection server settings.
#[derive(Debug, Clone)]
pub struct ServerConnConfig {
    /// Added to [`KEEP_ALIVE`]; the shell draws it at random below [`KEEP_ALIVE_MAX_JITTER`].
    pub keep_alive_jitter: Duration,
    /// Sealed to the client once it is verified.
    pub server_info: ServerInfo,
}

impl Default for ServerConnConfig {
    fn default() -> Self {
        Self {
            keep_alive_jitter: Duration::ZERO,
            server_info: ServerInfo::default(),
        }
    }
}

/// What a client asked of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerConnEvent {
    /// The client proved it holds `key`; register it before writing anything further
    /// (the server info is queued behind this event).
    Verified {
        key: NodePublicKey,
        info: ClientInfo,
    },
    /// Relay `packet` to `dst`.
    SendPacket { dst: NodePublicKey, packet: Bytes },
    /// The client says whether this is its home region.
    NotePreferred { preferred: bool },
}

/// Why a server connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ServerConnError {
    #[error("corrupt DERP stream from the client: {0}")]
    Frame(#[from] FrameError),
    #[error("client claiming key {key} sent a client info box that does not open: {source}")]
    ClientInfoBox {
        key: NodePublicKey,
        #[source]
        source: BoxError,
    },
    #[error("client {key} sent invalid client info: {source}")]
    ClientInfoJson {
        key: NodePublicKey,
        #[source]
        source: InfoJsonError,
    },
    #[error("no client info within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error(
        "client {key} sent a {kind} frame, which needs the mesh key (insufficient permissions)"
    )]
    MeshOnly {
        key: NodePublicKey,
        kind: &'static str,
    },
    #[error("the connection is already closed")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitClientInfo {
        deadline: Instant,
    },
    Running {
        client: NodePublicKey,
        next_keep_alive: Instant,
    },
    Closed,
}

/// Server side of one DERP connection. No sockets, no clock, no tasks.
#[derive(Debug, Clone)]
pub struct ServerConn {
    private_key: NodePrivateKey,
    config: ServerConnConfig,
    state: State,
    decoder: FrameDecoder,
    out: BytesMut,
    events: VecDeque<ServerConnEvent>,
    preferred: bool,
    peer_gone_limit: TokenBucket,
}

impl ServerConn {
    /// A freshly accepted (and upgraded) connection at `now`; the server-key greeting is
    /// queued at once.
    pub fn new(private_key: NodePrivateKey, config: ServerConnConfig, now: Instant) -> Self {
        let mut out = BytesMut::new();
        // A 40-byte frame is always under the write limit.
        let _ = Frame::ServerKey {
            key: private_key.public_key(),
        }
        .encode(&mut out);
        Self {
            private_key,
            config,
            state: State::AwaitClientInfo {
                deadline: now + HANDSHAKE_TIMEOUT,
            },
            decoder: FrameDecoder::new(),
            out,
            events: VecDeque::new(),
            preferred: false,
            // Go: rate.NewLimiter(rate.Every(time.Second), 3)
            peer_gone_limit: TokenBucket::new(now, 3, Duration::from_secs(1)),
        }
    }

    /// The verified client key, once the handshake is done.
    pub fn client_key(&self) -> Option<NodePublicKey> {
        match self.state {
            State::Running { client, .. } => Some(client),
            State::AwaitClientInfo { .. } | State::Closed => None,
        }
    }

    /// Whether the client last said this is its home region.
    pub fn is_preferred(&self) -> bool {
        self.preferred
    }

    /// Feeds bytes read from the client.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ServerConnError> {
        if self.state == State::Closed {
            return Err(ServerConnError::Closed);
        }
        self.decoder.push(bytes);
        loop {
            let policy = match self.state {
                State::AwaitClientInfo { .. } => Policy::ServerHandshake,
                State::Running { .. } | State::Closed => Policy::ServerRunning,
            };
            let raw = match self.decoder.next_frame(policy) {
                Ok(Some(raw)) => raw,
                Ok(None) => return Ok(()),
                Err(e) => return self.fail(e.into()),
            };
            if let Err(e) = self.handle_frame(now, raw.typ, &raw.payload) {
                return self.fail(e);
            }
        }
    }

    /// Queues a recv-packet frame carrying `packet` from `src`.
    pub fn queue_packet(&mut self, src: &NodePublicKey, packet: &[u8]) -> Result<(), FrameError> {
        trace!(from = %src.short(), len = packet.len(), "derp relay packet to client");
        frame::encode_recv_packet(&mut self.out, src, packet)
    }

    /// Queues a peer-gone frame.
    pub fn queue_peer_gone(&mut self, key: NodePublicKey, reason: PeerGoneReason) {
        debug!(peer = %key.short(), ?reason, "derp peer gone to client");
        // 38 bytes: always under the write limit.
        let _ = Frame::PeerGone { key, reason }.encode(&mut self.out);
    }

    /// Queues a health frame; an empty `problem` means healthy again.
    pub fn queue_health(&mut self, problem: &str) -> Result<(), FrameError> {
        Frame::Health {
            problem: problem.into(),
        }
        .encode(&mut self.out)
    }

    /// Queues a restarting frame (durations are sent in whole milliseconds).
    pub fn queue_restarting(&mut self, reconnect_in: Duration, try_for: Duration) {
        // 13 bytes: always under the write limit.
        let _ = Frame::Restarting {
            reconnect_in,
            try_for,
        }
        .encode(&mut self.out);
    }

    /// The client sent to `dst`, which has no connection here. Like Go, answer with
    /// peer-gone "not here" only when the packet looks like disco and at most 3 per
    /// second; returns whether a frame was queued.
    pub fn note_unknown_destination(
        &mut self,
        now: Instant,
        dst: NodePublicKey,
        packet: &[u8],
    ) -> bool {
        let looks_disco = packet.len() >= DISCO_MIN_LEN && packet[..6] == DISCO_MAGIC;
        if !looks_disco || !self.peer_gone_limit.allow(now) {
            trace!(dst = %dst.short(), looks_disco, "derp drop: unknown destination");
            return false;
        }
        self.queue_peer_gone(dst, PeerGoneReason::NotHere);
        true
    }

    /// Bytes to write to the stream, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        Some(self.out.split().freeze())
    }

    /// The next request from the client.
    pub fn poll_event(&mut self) -> Option<ServerConnEvent> {
        self.events.pop_front()
    }

    /// The handshake deadline, then the next keep-alive.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitClientInfo { deadline } => Some(deadline),
            State::Running {
                next_keep_alive, ..
            } => Some(next_keep_alive),
            State::Closed => None,
        }
    }

    /// Fails a handshake that took too long; queues due keep-alives.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ServerConnError> {
        match self.state {
            State::Closed => Err(ServerConnError::Closed),
            State::AwaitClientInfo { deadline } if now >= deadline => {
                self.fail(ServerConnError::HandshakeTimeout)
            }
            State::AwaitClientInfo { .. } => Ok(()),
            State::Running {
                client,
                next_keep_alive,
            } => {
                if now >= next_keep_alive {
                    trace!(client = %client.short(), "derp keep-alive");
                    let _ = Frame::KeepAlive.encode(&mut self.out);
                    // A ticker: the next tick is one period after this one, not after now.
                    let mut next = next_keep_alive + self.keep_alive_period();
                    while next <= now {
                        next += self.keep_alive_period();
                    }
                    self.state = State::Running {
                        client,
                        next_keep_alive: next,
                    };
                }
                Ok(())
            }
        }
    }

    fn keep_alive_period(&self) -> Duration {
        KEEP_ALIVE + self.config.keep_alive_jitter
    }

    fn fail(&mut self, e: ServerConnError) -> Result<(), ServerConnError> {
        debug!(client = ?self.client_key().map(|k| k.short()), error = %e, "derp server connection closed");
        self.state = State::Closed;
        Err(e)
    }

    fn handle_frame(
        &mut self,
        now: Instant,
        typ: u8,
        payload: &Bytes,
    ) -> Result<(), ServerConnError> {
        let frame = Frame::parse(typ, payload)?;
        let client = match self.state {
            State::Closed => return Err(ServerConnError::Closed),
            State::AwaitClientInfo { .. } => {
                let Frame::ClientInfo { key, sealed } = frame else {
                    // Policy::ServerHandshake admits only client info.
                    return Err(FrameError::Unexpected {
                        expected: "client info",
                        got: typ,
                    }
                    .into());
                };
                return self.verify(now, key, sealed);
            }
            State::Running { client, .. } => client,
        };
        match frame {
            Frame::SendPacket { dst, packet } => {
                trace!(from = %client.short(), to = %dst.short(), len = packet.len(), "derp send packet");
                let packet = payload.slice(KEY_LEN..KEY_LEN + packet.len());
                self.events
                    .push_back(ServerConnEvent::SendPacket { dst, packet });
            }
            Frame::NotePreferred { preferred } => {
                if preferred != self.preferred {
                    debug!(client = %client.short(), preferred, "derp note preferred");
                }
                self.preferred = preferred;
                self.events
                    .push_back(ServerConnEvent::NotePreferred { preferred });
            }
            Frame::Ping { data } => {
                trace!(client = %client.short(), "derp ping, answering");
                let _ = Frame::Pong { data }.encode(&mut self.out);
            }
            Frame::ForwardPacket { .. } => {
                return Err(ServerConnError::MeshOnly {
                    key: client,
                    kind: "forward packet",
                });
            }
            Frame::WatchConns => {
                return Err(ServerConnError::MeshOnly {
                    key: client,
                    kind: "watch conns",
                });
            }
            Frame::ClosePeer { .. } => {
                return Err(ServerConnError::MeshOnly {
                    key: client,
                    kind: "close peer",
                });
            }
            // Policy::ServerRunning skips every other type unread.
            Frame::ServerKey { .. }
            | Frame::ClientInfo { .. }
            | Frame::ServerInfo { .. }
            | Frame::RecvPacket { .. }
            | Frame::KeepAlive
            | Frame::PeerGone { .. }
            | Frame::PeerPresent { .. }
            | Frame::Pong { .. }
            | Frame::Health { .. }
            | Frame::Restarting { .. }
            | Frame::Unknown { .. } => trace!(typ, "ignoring frame from client"),
        }
        Ok(())
    }

    fn verify(
        &mut self,
        now: Instant,
        key: NodePublicKey,
        sealed: &[u8],
    ) -> Result<(), ServerConnError> {
        let json = self
            .private_key
            .open_from(&key, sealed)
            .map_err(|source| ServerConnError::ClientInfoBox { key, source })?;
        let info = ClientInfo::from_json(&json)
            .map_err(|source| ServerConnError::ClientInfoJson { key, source })?;
        debug!(client = %key.short(), ?info, "derp client verified");
        let sealed = self
            .private_key
            .seal_to(&key, &self.config.server_info.to_json());
        Frame::ServerInfo { sealed: &sealed }.encode(&mut self.out)?;
        self.state = State::Running {
            client: key,
            next_keep_alive: now + self.keep_alive_period(),
        };
        self.events
            .push_back(ServerConnEvent::Verified { key, info });
        Ok(())
    }
}

/// A token bucket over caller-supplied `Instant`s.
#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: u32,
    burst: u32,
    every: Duration,
    last_refill: Instant,
}

impl TokenBucket {
    fn new(now: Instant, burst: u32, every: Duration) -> Self {
        Self {
            tokens: burst,
            burst,
            every,
            last_refill: now,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        while self.tokens < self.burst
            && now.saturating_duration_since(self.last_refill) >= self.every
        {
            self.tokens += 1;
            self.last_refill += self.every;
        }
        if self.tokens == self.burst {
            self.last_refill = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
#[path = "server_core_tests.rs"]
mod tests;
