//! One dRPC call on one transport stream, sans-IO (storj/drpc `drpcstream` and the parts of
//! `drpcmanager` that a single call needs).
//!
//! Coder runs every RPC on a fresh yamux stream as dRPC stream id 1 (`MultiplexedConn`), so
//! a [`Call`] is a whole dRPC connection: bytes in through [`Call::handle_input`], bytes out
//! through [`Call::poll_transmit`], what the peer did out of [`Call::poll_event`].

use std::collections::VecDeque;

use super::codec::{self, CodecError, Id, Kind, Packet, PacketReader};

/// Which end of the call this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// What the peer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// Server only: the client invoked this method path (first event of a server call).
    Invoked { path: String },
    /// One message.
    Message(Vec<u8>),
    /// The peer sends no more messages (close-send).
    RemoteDone,
    /// The peer ended the call with an error packet. Terminal.
    RemoteError { code: u64, text: String },
    /// The peer cancelled the call. Terminal.
    Canceled,
    /// The peer closed the call. Terminal.
    Closed,
}

/// The peer broke the protocol; the call is over and its transport stream should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{kind} packet {id} arrived before any invoke")]
    BeforeInvoke { kind: Kind, id: Id },
    #[error("invoke packet {id} on a stream that is already running")]
    InvokeOnExistingStream { id: Id },
    #[error("packet {id} opens a second call on this transport stream (one call per yamux stream)")]
    SecondCall { id: Id },
    #[error("{kind} packet {id} is for stream {}, but this call is stream {current}", id.stream)]
    OtherStream { kind: Kind, id: Id, current: u64 },
    #[error("{kind} packet {id} is not valid on a running call")]
    UnexpectedKind { kind: Kind, id: Id },
    #[error("the transport stream ended before the call finished")]
    Truncated,
}

/// The dRPC stream id Coder's clients use for every call (one call per yamux stream).
pub const CLIENT_STREAM_ID: u64 = 1;

/// One call's state.
#[derive(Debug)]
pub struct Call {
    role: Role,
    /// 0 until a server call has seen its invoke.
    stream: u64,
    /// Message id of the last packet we sent.
    sent: u64,
    reader: PacketReader,
    out: Vec<u8>,
    events: VecDeque<CallEvent>,
    sent_close_send: bool,
    remote_done: bool,
    /// An error, cancel or close was sent or received, or the input was bad.
    terminated: bool,
}

impl Call {
    /// A client call of `path` on dRPC stream 1; the invoke is queued at once.
    pub fn client(path: &str) -> Self {
        let mut call = Self::new(Role::Client, CLIENT_STREAM_ID);
        call.send(Kind::Invoke, false, path.as_bytes());
        call
    }

    /// A server call waiting for its invoke.
    pub fn server() -> Self {
        Self::new(Role::Server, 0)
    }

    fn new(role: Role, stream: u64) -> Self {
        Self {
            role,
            stream,
            sent: 0,
            reader: PacketReader::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            sent_close_send: false,
            remote_done: false,
            terminated: false,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Feeds received bytes. After an error the call is terminated; the caller closes the
    /// transport stream (a server may first send the error text with [`Call::send_error`]).
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), CallError> {
        self.reader.push(bytes);
        loop {
            let packet = match self.reader.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(e.into())),
            };
            if let Err(e) = self.handle_packet(packet) {
                return Err(self.fail(e));
            }
        }
    }

    /// The transport stream ended (EOF). Fine once the peer is done sending or the call is
    /// over; otherwise the call was cut short.
    pub fn handle_eof(&mut self) -> Result<(), CallError> {
        if self.terminated || self.remote_done {
            return Ok(());
        }
        Err(self.fail(CallError::Truncated))
    }

    /// What the peer did, in order.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    /// Bytes to write to the transport stream.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.out))
        }
    }

    /// Queues one message; `false` (and nothing queued) once we sent close-send or the call is
    /// over.
    pub fn send_message(&mut self, msg: &[u8]) -> bool {
        if !self.can_send() {
            return false;
        }
        self.send(Kind::Message, false, msg);
        true
    }

    /// Queues close-send: we send no more messages. Once only; nothing after the call ended.
    pub fn close_send(&mut self) {
        if !self.can_send() {
            return;
        }
        self.sent_close_send = true;
        self.send(Kind::CloseSend, false, &[]);
    }

    /// Queues close (kind 5), ending the call for both sides, unless it already ended
    /// (including by both sides having sent close-send).
    pub fn close(&mut self) {
        if self.is_finished() {
            return;
        }
        self.terminated = true;
        self.send(Kind::Close, false, &[]);
    }

    /// Queues cancel (kind 4, control bit), ending the call, unless it already ended.
    pub fn cancel(&mut self) {
        if self.is_finished() {
            return;
        }
        self.terminated = true;
        self.send(Kind::Cancel, true, &[]);
    }

    /// Queues an error packet, ending the call for both sides (no close-send follows), unless
    /// it already ended. A server that has not seen an invoke answers on stream 1.
    pub fn send_error(&mut self, code: u64, text: &str) {
        if self.terminated {
            return;
        }
        self.terminated = true;
        if self.stream == 0 {
            self.stream = CLIENT_STREAM_ID;
        }
        self.send(Kind::Error, false, &codec::error_data(code, text));
    }

    /// Nothing more will be sent or received: an error, cancel or close went either way, or
    /// both sides sent close-send.
    pub fn is_finished(&self) -> bool {
        self.terminated || (self.sent_close_send && self.remote_done)
    }

    /// The peer sends no more messages.
    pub fn is_remote_done(&self) -> bool {
        self.remote_done || self.terminated
    }

    fn can_send(&self) -> bool {
        !self.terminated && !self.sent_close_send
    }

    fn send(&mut self, kind: Kind, control: bool, data: &[u8]) {
        self.sent += 1;
        let id = Id::new(self.stream, self.sent);
        tracing::trace!(%id, %kind, len = data.len(), "drpc send");
        codec::put_packet(&mut self.out, id, kind, control, data);
    }

    /// Ends the call after bad input. A server tells the client why with an error packet
    /// (code 0, `protocol error: …`) before the transport stream is closed; a client just
    /// closes, as drpc does.
    fn fail(&mut self, e: CallError) -> CallError {
        if self.role == Role::Server && !self.terminated {
            self.send_error(0, &format!("protocol error: {e}"));
        }
        self.terminated = true;
        e
    }

    fn handle_packet(&mut self, p: Packet) -> Result<(), CallError> {
        tracing::trace!(id = %p.id, kind = %p.kind, len = p.data.len(), "drpc packet");
        if self.stream == 0 {
            return self.before_invoke(p);
        }
        if p.id.stream < self.stream {
            // A finished earlier stream (drpcmanager ignores these).
            return Ok(());
        }
        if p.id.stream > self.stream {
            return match p.kind {
                Kind::Unknown(_) if p.control => Ok(()),
                Kind::Invoke | Kind::InvokeMetadata => Err(CallError::SecondCall { id: p.id }),
                kind => Err(CallError::OtherStream {
                    kind,
                    id: p.id,
                    current: self.stream,
                }),
            };
        }
        if self.terminated {
            // drpcstream drops whatever arrives after the call ended.
            return Ok(());
        }
        match p.kind {
            Kind::Message => {
                if self.remote_done {
                    tracing::debug!(id = %p.id, "drpc message after close-send dropped");
                } else {
                    self.events.push_back(CallEvent::Message(p.data));
                }
            }
            Kind::Invoke => return Err(CallError::InvokeOnExistingStream { id: p.id }),
            Kind::Error => {
                let (code, text) = codec::parse_error_data(&p.data);
                self.terminated = true;
                self.events.push_back(CallEvent::RemoteError { code, text });
            }
            Kind::Cancel => {
                self.terminated = true;
                self.events.push_back(CallEvent::Canceled);
            }
            Kind::Close => {
                self.terminated = true;
                self.events.push_back(CallEvent::Closed);
            }
            Kind::CloseSend => {
                if !self.remote_done {
                    self.remote_done = true;
                    self.events.push_back(CallEvent::RemoteDone);
                }
            }
            Kind::InvokeMetadata | Kind::Unknown(_) if p.control => {}
            kind @ (Kind::InvokeMetadata | Kind::Unknown(_)) => {
                return Err(CallError::UnexpectedKind { kind, id: p.id });
            }
        }
        Ok(())
    }

    /// A server's packets before the invoke: metadata is accepted (and not used), control
    /// packets of unknown kinds are ignored, anything else is an error.
    fn before_invoke(&mut self, p: Packet) -> Result<(), CallError> {
        match p.kind {
            Kind::Invoke => {
                self.stream = p.id.stream;
                let path = String::from_utf8_lossy(&p.data).into_owned();
                tracing::trace!(id = %p.id, %path, "drpc invoke");
                self.events.push_back(CallEvent::Invoked { path });
                Ok(())
            }
            Kind::InvokeMetadata => Ok(()),
            Kind::Unknown(_) if p.control => Ok(()),
            kind => Err(CallError::BeforeInvoke { kind, id: p.id }),
        }
    }
}

#[cfg(test)]
mod tests;
