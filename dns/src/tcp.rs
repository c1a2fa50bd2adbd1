//! DNS over TCP framing (RFC 1035 §4.2.2, RFC 7766): each message is preceded by its length
//! as two bytes, big-endian. Sans-IO: the shell reads the stream into [`TcpDecoder::push`],
//! answers each [`TcpDecoder::next_message`] with [`Transport::Tcp`](crate::Transport::Tcp)
//! and frames the response with [`encode_tcp`].

/// Largest DNS message a 2-byte length can carry.
pub const MAX_TCP_MESSAGE: usize = u16::MAX as usize;
const PREFIX_LEN: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcpError {
    #[error("DNS message of {len} bytes does not fit a 2-byte TCP length prefix (max 65535)")]
    TooLong { len: usize },
    #[error("TCP stream ended inside a DNS message: {have} of {want} bytes")]
    Truncated { have: usize, want: usize },
}

/// Appends `msg` with its 2-byte length prefix to `out`. Nothing is appended on error.
pub fn encode_tcp(msg: &[u8], out: &mut Vec<u8>) -> Result<(), TcpError> {
    let Ok(len) = u16::try_from(msg.len()) else {
        return Err(TcpError::TooLong { len: msg.len() });
    };
    out.reserve(PREFIX_LEN + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    Ok(())
}

/// Splits a TCP byte stream into DNS messages, however the stream is cut into reads.
///
/// Holds at most the bytes pushed and not yet taken: drain [`next_message`] after every
/// [`push`] and it never holds more than one message plus one read.
///
/// [`next_message`]: TcpDecoder::next_message
/// [`push`]: TcpDecoder::push
#[derive(Debug, Default)]
pub struct TcpDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    taken: usize,
}

impl TcpDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.taken > 0 {
            self.buf.drain(..self.taken);
            self.taken = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message (without its prefix), or `None` until more bytes arrive.
    /// A zero-length frame yields an empty message (which [`Zone::answer`] drops).
    ///
    /// [`Zone::answer`]: crate::Zone::answer
    pub fn next_message(&mut self) -> Option<&[u8]> {
        let rest = self.buf.get(self.taken..)?;
        let (prefix, body) = rest.split_first_chunk::<PREFIX_LEN>()?;
        let len = usize::from(u16::from_be_bytes(*prefix));
        let msg = body.get(..len)?;
        self.taken += PREFIX_LEN + len;
        Some(msg)
    }

    /// Bytes held that are not yet part of a complete message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.taken
    }

    /// Call at end of stream: an error if it ended inside a message.
    pub fn finish(&self) -> Result<(), TcpError> {
        let rest = self.buf.get(self.taken..).unwrap_or_default();
        match rest {
            [] => Ok(()),
            [_] => Err(TcpError::Truncated {
                have: 1,
                want: PREFIX_LEN,
            }),
            [hi, lo, body @ ..] => Err(TcpError::Truncated {
                have: PREFIX_LEN + body.len(),
                want: PREFIX_LEN + usize::from(u16::from_be_bytes([*hi, *lo])),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            encode_tcp(m, &mut out).unwrap();
        }
        out
    }

    fn drain(dec: &mut TcpDecoder) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(m) = dec.next_message() {
            out.push(m.to_vec());
        }
        out
    }

    #[test]
    fn tcp_frame_is_two_byte_big_endian_length_then_message() {
        let mut out = Vec::new();
        encode_tcp(&[7u8; 300], &mut out).unwrap();
        assert_eq!(&out[..2], &[0x01, 0x2c]);
        assert_eq!(out.len(), 302);
    }

    #[test]
    fn tcp_message_over_65535_bytes_is_refused() {
        let mut out = vec![1];
        let err = encode_tcp(&vec![0; 65536], &mut out).unwrap_err();
        assert_eq!(err, TcpError::TooLong { len: 65536 });
        assert_eq!(out, [1], "nothing appended on error");
        encode_tcp(&vec![0; 65535], &mut out).unwrap();
    }

    #[test]
    fn tcp_decoder_yields_same_messages_however_stream_is_cut() {
        let stream = framed(&[b"first", b"", &[9u8; 1000], b"last"]);
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            let mut dec = TcpDecoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                dec.push(piece);
                got.extend(drain(&mut dec));
            }
            assert_eq!(
                got,
                [b"first".to_vec(), vec![], vec![9u8; 1000], b"last".to_vec()],
                "chunk {chunk}"
            );
            assert_eq!(dec.pending(), 0);
            dec.finish().unwrap();
        }
    }

    #[test]
    fn tcp_stream_ending_inside_a_message_is_truncated() {
        let mut dec = TcpDecoder::new();
        dec.push(&[0x00]);
        assert_eq!(dec.finish(), Err(TcpError::Truncated { have: 1, want: 2 }));
        dec.push(&[0x05, b'a', b'b']);
        assert!(dec.next_message().is_none());
        assert_eq!(dec.finish(), Err(TcpError::Truncated { have: 4, want: 7 }));
    }

    #[test]
    fn tcp_decoder_drops_taken_bytes_on_next_push() {
        let mut dec = TcpDecoder::new();
        dec.push(&framed(&[&[1u8; 100]]));
        assert_eq!(drain(&mut dec).len(), 1);
        dec.push(&[0x00]);
        assert_eq!(dec.pending(), 1);
        assert_eq!(dec.buf.len(), 1, "consumed bytes were released");
    }
}
