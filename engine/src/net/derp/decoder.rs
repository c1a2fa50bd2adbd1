//! Cutting a byte stream into DERP frames under the limits of one side (tailnet.md §13.3
//! "Other limits"; Go: `readFrameHeader` callers in `derp_client.go` and `derp_server.go`).

use std::fmt;

use bytes::{Buf, BytesMut};

use super::frame::{
    CLIENT_INFO_MAX_LEN, CLIENT_INFO_MIN_LEN, CLIENT_MAX_FRAME_LEN, FrameError, FrameType,
    HEADER_LEN, MAX_PACKET_SIZE, RawFrame, SERVER_PING_MAX_LEN,
};
use super::keys::KEY_LEN;

/// The limits one side applies to incoming frame headers, before buffering any payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A client reading the server: any frame over 1 MiB means a corrupt stream.
    Client,
    /// A server awaiting the client-info frame: nothing else, 56 B to 256 KiB.
    ServerHandshake,
    /// A server after the handshake: frames a client sends are size-checked; every other
    /// type (including ones no version defines) is skipped unread, whatever its length.
    ServerRunning,
}

enum Admit {
    Read,
    Skip,
}

impl Policy {
    fn admit(self, typ: u8, len: u32) -> Result<Admit, FrameError> {
        let too_long = |max: u32, side: &'static str| {
            if len > max {
                Err(FrameError::TooLong {
                    typ,
                    len,
                    max,
                    side,
                })
            } else {
                Ok(Admit::Read)
            }
        };
        match self {
            Policy::Client => too_long(CLIENT_MAX_FRAME_LEN, "client read limit"),
            Policy::ServerHandshake => {
                if typ != FrameType::ClientInfo as u8 {
                    return Err(FrameError::Unexpected {
                        expected: "client info",
                        got: typ,
                    });
                }
                if len < CLIENT_INFO_MIN_LEN {
                    return Err(FrameError::Short {
                        kind: "client info",
                        len: len as usize,
                        min: CLIENT_INFO_MIN_LEN as usize,
                    });
                }
                too_long(CLIENT_INFO_MAX_LEN, "server client-info limit")
            }
            Policy::ServerRunning => {
                const PKT: u32 = MAX_PACKET_SIZE as u32;
                const K: u32 = KEY_LEN as u32;
                match FrameType::from_u8(typ) {
                    Some(FrameType::SendPacket) => too_long(K + PKT, "server packet limit"),
                    Some(FrameType::ForwardPacket) => too_long(2 * K + PKT, "server packet limit"),
                    Some(FrameType::Ping) => too_long(SERVER_PING_MAX_LEN, "server ping limit"),
                    // Fixed sizes; Frame::parse reports the exact mismatch.
                    Some(FrameType::NotePreferred) => too_long(1, "server frame limit"),
                    Some(FrameType::WatchConns) => too_long(0, "server frame limit"),
                    Some(FrameType::ClosePeer) => too_long(K, "server frame limit"),
                    Some(
                        FrameType::ServerKey
                        | FrameType::ClientInfo
                        | FrameType::ServerInfo
                        | FrameType::RecvPacket
                        | FrameType::KeepAlive
                        | FrameType::PeerGone
                        | FrameType::PeerPresent
                        | FrameType::Pong
                        | FrameType::Health
                        | FrameType::Restarting,
                    )
                    | None => Ok(Admit::Skip),
                }
            }
        }
    }
}

/// Cuts a byte stream into frames. Feed it with [`push`](Self::push), then call [`next_frame`](Self::next_frame) until it returns
/// `Ok(None)`. After an error the stream is corrupt and the connection should be closed.
#[derive(Default, Clone)]
pub struct FrameDecoder {
    buf: BytesMut,
    /// Payload bytes of a skipped frame still to discard.
    skip: u64,
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.buf.len())
            .field("skip", &self.skip)
            .finish()
    }
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        let skipped = self.discard_skipped(bytes.len());
        self.buf.extend_from_slice(&bytes[skipped..]);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Cuts the next frame, if a whole one is buffered.
    pub fn next_frame(&mut self, policy: Policy) -> Result<Option<RawFrame>, FrameError> {
        loop {
            let n = self.discard_skipped(0);
            debug_assert_eq!(n, 0);
            if self.skip > 0 || self.buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let typ = self.buf[0];
            let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            match policy.admit(typ, len)? {
                Admit::Skip => {
                    self.buf.advance(HEADER_LEN);
                    self.skip = u64::from(len);
                    continue;
                }
                Admit::Read => {}
            }
            let total = HEADER_LEN + len as usize;
            if self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(HEADER_LEN);
            let payload = self.buf.split_to(len as usize).freeze();
            return Ok(Some(RawFrame { typ, payload }));
        }
    }

    /// Discards pending skip bytes from the buffer, then reports how many of `incoming`
    /// bytes (about to be pushed) are skipped too.
    fn discard_skipped(&mut self, incoming: usize) -> usize {
        if self.skip == 0 {
            return 0;
        }
        let from_buf = self.skip.min(self.buf.len() as u64) as usize;
        self.buf.advance(from_buf);
        self.skip -= from_buf as u64;
        let from_incoming = self.skip.min(incoming as u64) as usize;
        self.skip -= from_incoming as u64;
        from_incoming
    }
}
