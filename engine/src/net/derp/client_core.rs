//! The DERP client connection as a value you feed (docs/ARCHITECTURE.md "Principles"; Go: `derp/derp_client.go`).
//! No sockets, no clock, no tasks: [`DerpClient::handle_input`] takes bytes read from the
//! upgraded stream, [`DerpClient::poll_transmit`] gives bytes to write, events and the idle
//! deadline come out of [`DerpClient::poll_event`] and [`DerpClient::poll_timeout`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{debug, trace};

use super::decoder::{FrameDecoder, Policy};
use super::frame::{self, Frame, FrameError, FrameType, PeerGoneReason, SERVER_KEY_MAX_LEN};
use super::keys::{
    BoxError, ClientInfo, InfoJsonError, KEY_LEN, NodePrivateKey, NodePublicKey, ServerInfo,
};

/// A client gives up on a connection after this long without any frame (Go: `Recv`'s
/// 120-second read deadline).
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes a caller may queue before the server key arrives; past it, sends are refused.
pub const PRE_HANDSHAKE_QUEUE_LIMIT: usize = 256 << 10;

/// How the client presents itself.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// The client-info JSON; the default is `{"version":2,"CanAckPings":true}`.
    pub info: ClientInfo,
    /// The server key announced out of band (the `Derp-Public-Key` response header). When
    /// set, a server-key frame with another key is refused.
    pub expected_server_key: Option<NodePublicKey>,
}

/// What the client learnt from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server-key frame arrived; the client info has been queued.
    ServerKey(NodePublicKey),
    /// The server-info frame arrived and opened: the handshake is complete.
    Connected {
        server_key: NodePublicKey,
        info: ServerInfo,
    },
    /// A packet relayed from `from`.
    Packet { from: NodePublicKey, data: Bytes },
    /// `key` is no longer reachable through this server.
    PeerGone {
        key: NodePublicKey,
        reason: PeerGoneReason,
    },
    /// `key` connected (only sent to trusted mesh clients).
    PeerPresent { key: NodePublicKey },
    /// The server's view of this connection's health; `None` means healthy again.
    Health { problem: Option<String> },
    /// The server is restarting: reconnect after `reconnect_in`, keep trying for `try_for`.
    Restarting {
        reconnect_in: Duration,
        try_for: Duration,
    },
    /// The server answered one of our pings.
    Pong { data: [u8; 8] },
}

/// Why the client connection failed. After any of these the connection is dead.
#[derive(Debug, thiserror::Error)]
pub enum DerpClientError {
    #[error("corrupt DERP stream from the server: {0}")]
    Frame(#[from] FrameError),
    #[error("invalid server greeting: {0}")]
    Greeting(String),
    #[error(
        "server key frame announces {frame}, but the HTTP response said Derp-Public-Key {header}"
    )]
    ServerKeyMismatch {
        header: NodePublicKey,
        frame: NodePublicKey,
    },
    #[error("invalid server info frame from {server}: {source}")]
    ServerInfoBox {
        server: NodePublicKey,
        #[source]
        source: BoxError,
    },
    #[error("invalid server info frame: {0}")]
    ServerInfoJson(#[from] InfoJsonError),
    #[error("no frame from the server for {idle:?} (limit {CLIENT_IDLE_TIMEOUT:?})")]
    IdleTimeout { idle: Duration },
    #[error("cannot send a {len}-byte packet: DERP carries at most {max} bytes", max = frame::MAX_PACKET_SIZE)]
    PacketTooLarge { len: usize },
    #[error(
        "{queued} bytes already queued before the server greeting (limit {PRE_HANDSHAKE_QUEUE_LIMIT})"
    )]
    PreHandshakeQueueFull { queued: usize },
    #[error("the DERP connection already failed")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitServerKey,
    AwaitServerInfo { server_key: NodePublicKey },
    Connected { server_key: NodePublicKey },
    Closed,
}

/// DERP client connection state. No sockets, no clock, no tasks.
#[derive(Debug, Clone)]
pub struct DerpClient {
    private_key: NodePrivateKey,
    config: ClientConfig,
    state: State,
    decoder: FrameDecoder,
    /// Frames ready to write.
    out: BytesMut,
    /// Frames queued before the server key arrived (they must follow the client info).
    pending: BytesMut,
    events: VecDeque<ClientEvent>,
    last_rx: Instant,
}

impl DerpClient {
    /// A connection that has just been upgraded, at `now`. Nothing is written until the
    /// server's greeting arrives.
    pub fn new(private_key: NodePrivateKey, config: ClientConfig, now: Instant) -> Self {
        Self {
            private_key,
            config,
            state: State::AwaitServerKey,
            decoder: FrameDecoder::new(),
            out: BytesMut::new(),
            pending: BytesMut::new(),
            events: VecDeque::new(),
            last_rx: now,
        }
    }

    /// This client's node public key.
    pub fn public_key(&self) -> NodePublicKey {
        self.private_key.public_key()
    }

    /// The server's key, once its greeting arrived.
    pub fn server_key(&self) -> Option<NodePublicKey> {
        match self.state {
            State::AwaitServerKey | State::Closed => None,
            State::AwaitServerInfo { server_key } | State::Connected { server_key } => {
                Some(server_key)
            }
        }
    }

    /// Whether the server-info frame has arrived.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    /// Feeds bytes read from the server.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), DerpClientError> {
        if self.state == State::Closed {
            return Err(DerpClientError::Closed);
        }
        self.decoder.push(bytes);
        loop {
            let raw = match self.decoder.next_frame(Policy::Client) {
                Ok(Some(raw)) => raw,
                Ok(None) => return Ok(()),
                Err(e) => return self.fail(e.into()),
            };
            self.last_rx = now;
            if let Err(e) = self.handle_frame(raw.typ, &raw.payload) {
                return self.fail(e);
            }
        }
    }

    /// Queues a packet for `to`. Before the server greeting, packets wait (up to
    /// [`PRE_HANDSHAKE_QUEUE_LIMIT`] bytes) and are written right after the client info.
    pub fn send_packet(&mut self, to: NodePublicKey, packet: &[u8]) -> Result<(), DerpClientError> {
        if packet.len() > frame::MAX_PACKET_SIZE {
            return Err(DerpClientError::PacketTooLarge { len: packet.len() });
        }
        trace!(to = %to.short(), len = packet.len(), "derp send packet");
        let buf = self.queue()?;
        frame::encode_send_packet(buf, &to, packet)?;
        Ok(())
    }

    /// Tells the server whether it is this client's home region.
    pub fn note_preferred(&mut self, preferred: bool) -> Result<(), DerpClientError> {
        let buf = self.queue()?;
        Frame::NotePreferred { preferred }.encode(buf)?;
        Ok(())
    }

    /// Pings the server; its pong comes back as [`ClientEvent::Pong`].
    pub fn send_ping(&mut self, data: [u8; 8]) -> Result<(), DerpClientError> {
        let buf = self.queue()?;
        Frame::Ping { data }.encode(buf)?;
        Ok(())
    }

    /// Bytes to write to the stream, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        Some(self.out.split().freeze())
    }

    /// Whether [`Self::poll_transmit`] has bytes.
    pub fn has_transmit(&self) -> bool {
        !self.out.is_empty()
    }

    /// The next thing learnt from the server.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When to call [`Self::handle_timeout`]: the idle give-up deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::AwaitServerKey | State::AwaitServerInfo { .. } | State::Connected { .. } => {
                Some(self.last_rx + CLIENT_IDLE_TIMEOUT)
            }
        }
    }

    /// Gives up on the connection once [`CLIENT_IDLE_TIMEOUT`] passed without a frame.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), DerpClientError> {
        if self.state == State::Closed {
            return Err(DerpClientError::Closed);
        }
        let idle = now.saturating_duration_since(self.last_rx);
        if idle >= CLIENT_IDLE_TIMEOUT {
            return self.fail(DerpClientError::IdleTimeout { idle });
        }
        Ok(())
    }

    fn fail(&mut self, e: DerpClientError) -> Result<(), DerpClientError> {
        debug!(error = %e, "derp client connection failed");
        self.state = State::Closed;
        Err(e)
    }

    /// Where frames the caller sends go: straight out once the client info is written.
    fn queue(&mut self) -> Result<&mut BytesMut, DerpClientError> {
        match self.state {
            State::Closed => Err(DerpClientError::Closed),
            State::AwaitServerKey => {
                if self.pending.len() >= PRE_HANDSHAKE_QUEUE_LIMIT {
                    return Err(DerpClientError::PreHandshakeQueueFull {
                        queued: self.pending.len(),
                    });
                }
                Ok(&mut self.pending)
            }
            State::AwaitServerInfo { .. } | State::Connected { .. } => Ok(&mut self.out),
        }
    }

    fn handle_frame(&mut self, typ: u8, payload: &Bytes) -> Result<(), DerpClientError> {
        if let State::AwaitServerKey = self.state {
            return self.handle_greeting(typ, payload);
        }
        let frame = match Frame::parse(typ, payload) {
            Ok(f) => f,
            Err(e) => {
                // Go's client drops short frames and reads on.
                debug!(error = %e, "dropping malformed frame from DERP server");
                return Ok(());
            }
        };
        match frame {
            Frame::ServerInfo { sealed } => {
                let State::AwaitServerInfo { server_key } = self.state else {
                    debug!("ignoring a second server info frame");
                    return Ok(());
                };
                let json = self
                    .private_key
                    .open_from(&server_key, sealed)
                    .map_err(|source| DerpClientError::ServerInfoBox {
                        server: server_key,
                        source,
                    })?;
                let info = ServerInfo::from_json(&json)?;
                debug!(server = %server_key.short(), ?info, "derp handshake complete");
                self.state = State::Connected { server_key };
                self.events
                    .push_back(ClientEvent::Connected { server_key, info });
            }
            Frame::RecvPacket { src, packet } => {
                trace!(from = %src.short(), len = packet.len(), "derp recv packet");
                let data = payload.slice(KEY_LEN..KEY_LEN + packet.len());
                self.events
                    .push_back(ClientEvent::Packet { from: src, data });
            }
            Frame::KeepAlive => trace!("derp keep-alive"),
            Frame::PeerGone { key, reason } => {
                debug!(peer = %key.short(), ?reason, "derp peer gone");
                self.events.push_back(ClientEvent::PeerGone { key, reason });
            }
            Frame::PeerPresent { key } => self.events.push_back(ClientEvent::PeerPresent { key }),
            Frame::Ping { data } => {
                if self.config.info.can_ack_pings {
                    trace!("derp ping from server, answering");
                    Frame::Pong { data }.encode(&mut self.out)?;
                }
            }
            Frame::Pong { data } => self.events.push_back(ClientEvent::Pong { data }),
            Frame::Health { problem } => {
                let problem = (!problem.is_empty()).then(|| problem.into_owned());
                debug!(?problem, "derp server health");
                self.events.push_back(ClientEvent::Health { problem });
            }
            Frame::Restarting {
                reconnect_in,
                try_for,
            } => {
                debug!(?reconnect_in, ?try_for, "derp server restarting");
                self.events.push_back(ClientEvent::Restarting {
                    reconnect_in,
                    try_for,
                });
            }
            // Frames a server does not send to clients, and types this version does not
            // know, are ignored (Go's client: `default: continue`).
            Frame::ServerKey { .. }
            | Frame::ClientInfo { .. }
            | Frame::SendPacket { .. }
            | Frame::NotePreferred { .. }
            | Frame::ForwardPacket { .. }
            | Frame::WatchConns
            | Frame::ClosePeer { .. }
            | Frame::Unknown { .. } => trace!(typ, "ignoring frame"),
        }
        Ok(())
    }

    /// The first frame must be the server key (Go: `recvServerKey`, 1 KiB limit).
    fn handle_greeting(&mut self, typ: u8, payload: &[u8]) -> Result<(), DerpClientError> {
        if typ != FrameType::ServerKey as u8 {
            return Err(DerpClientError::Greeting(format!(
                "first frame has type {typ:#04x}, not server key"
            )));
        }
        if payload.len() > SERVER_KEY_MAX_LEN as usize {
            return Err(DerpClientError::Greeting(format!(
                "server key frame of {} bytes is over {SERVER_KEY_MAX_LEN}",
                payload.len()
            )));
        }
        let server_key = match Frame::parse(typ, payload) {
            Ok(Frame::ServerKey { key }) => key,
            Ok(other) => {
                return Err(DerpClientError::Greeting(format!("unexpected {other:?}")));
            }
            Err(e) => return Err(DerpClientError::Greeting(e.to_string())),
        };
        match self.config.expected_server_key {
            Some(header) if header != server_key => {
                return Err(DerpClientError::ServerKeyMismatch {
                    header,
                    frame: server_key,
                });
            }
            Some(_) | None => {}
        }
        let sealed = self
            .private_key
            .seal_to(&server_key, &self.config.info.to_json());
        Frame::ClientInfo {
            key: self.public_key(),
            sealed: &sealed,
        }
        .encode(&mut self.out)?;
        self.out.extend_from_slice(&self.pending);
        self.pending = BytesMut::new();
        debug!(server = %server_key.short(), "derp server key received, client info sent");
        self.state = State::AwaitServerInfo { server_key };
        self.events.push_back(ClientEvent::ServerKey(server_key));
        Ok(())
    }
}

#[cfg(test)]
#[path = "client_core_tests.rs"]
mod tests;
