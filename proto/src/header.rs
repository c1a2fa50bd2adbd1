//! The handshake line `codervpn <role> <versions>\n` (codervpn-protocol.md §2).

use std::fmt;

use crate::version::{Version, VersionError, VersionList};

/// The line may be at most this long, `\n` included.
pub const MAX_HEADER_LEN: usize = 256;
const PREAMBLE: &str = "codervpn";

/// Which end of the protocol a side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Manager,
    Tunnel,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Tunnel => "tunnel",
        }
    }

    /// The role we expect the other end to announce.
    pub fn peer(self) -> Role {
        match self {
            Role::Manager => Role::Tunnel,
            Role::Tunnel => Role::Manager,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Our own handshake line, `\n` included.
pub fn build_header(role: Role, versions: &VersionList) -> String {
    format!("{PREAMBLE} {role} {versions}\n")
}

/// Why the peer's header was refused. Display gives `validate header (<header>): <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("validate header ({header}): {reason}")]
pub struct HeaderError {
    pub header: String,
    pub reason: HeaderReason,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderReason {
    #[error("wrong number of parts")]
    WrongNumberOfParts,
    #[error("invalid preamble")]
    InvalidPreamble,
    #[error("unexpected role {got:?}, want {want:?}")]
    UnexpectedRole { got: String, want: Role },
    #[error(transparent)]
    Versions(#[from] VersionError),
    #[error("current supported versions {ours:?} is not compatible with peer versions {peer:?}")]
    Incompatible { ours: String, peer: String },
}

/// What a validated peer header gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHeader {
    pub versions: VersionList,
    pub negotiated: Version,
}

/// Validates the peer's line (without its `\n`) in Go's `validateHeader` order.
pub fn validate_header(
    line: &str,
    expected_peer: Role,
    ours: &VersionList,
) -> Result<PeerHeader, HeaderError> {
    let fail = |reason| HeaderError {
        header: line.to_owned(),
        reason,
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let [preamble, role, versions] = parts[..] else {
        return Err(fail(HeaderReason::WrongNumberOfParts));
    };
    if preamble != PREAMBLE {
        return Err(fail(HeaderReason::InvalidPreamble));
    }
    if role != expected_peer.as_str() {
        return Err(fail(HeaderReason::UnexpectedRole {
            got: role.to_owned(),
            want: expected_peer,
        }));
    }
    let peer = VersionList::parse(versions).map_err(|e| fail(e.into()))?;
    let Some(negotiated) = ours.negotiate(&peer) else {
        return Err(fail(HeaderReason::Incompatible {
            ours: ours.to_string(),
            peer: peer.to_string(),
        }));
    };
    Ok(PeerHeader {
        versions: peer,
        negotiated,
    })
}

/// The header line was not terminated within [`MAX_HEADER_LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("header malformed or too large (no newline in {MAX_HEADER_LEN} bytes)")]
pub struct HeaderTooLong;

/// Collects the peer's header one byte at a time, so that no byte of the first frame is
/// consumed.
#[derive(Debug, Default)]
pub struct HeaderReader {
    buf: Vec<u8>,
}

impl HeaderReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one byte. Returns the line (without `\n`) once it is complete.
    pub fn push(&mut self, byte: u8) -> Result<Option<String>, HeaderTooLong> {
        if byte == b'\n' {
            let line = String::from_utf8_lossy(&self.buf).into_owned();
            self.buf.clear();
            return Ok(Some(line));
        }
        self.buf.push(byte);
        if self.buf.len() >= MAX_HEADER_LEN {
            return Err(HeaderTooLong);
        }
        Ok(None)
    }

    /// Bytes consumed so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> VersionList {
        VersionList::current()
    }

    #[test]
    fn builds_our_line() {
        assert_eq!(build_header(Role::Tunnel, &ours()), "codervpn tunnel 1.3\n");
        assert_eq!(
            build_header(Role::Manager, &ours()),
            "codervpn manager 1.3\n"
        );
    }

    // checklist #1
    #[test]
    fn manager_offering_1_3_and_2_1_negotiates_1_3() {
        let peer = validate_header("codervpn manager 1.3,2.1", Role::Manager, &ours()).unwrap();
        assert_eq!(peer.negotiated, Version::new(1, 3));
    }

    #[test]
    fn go_tunnel_at_1_1_negotiates_1_1() {
        let peer = validate_header("codervpn tunnel 1.1", Role::Tunnel, &ours()).unwrap();
        assert_eq!(peer.negotiated, Version::new(1, 1));
    }

    // checklist #7–#12 (TestSpeaker_HandshakeInvalid)
    #[test]
    fn invalid_headers_name_the_failed_check() {
        let cases = [
            ("ssh manager 1.1", "invalid preamble"),
            ("ssh manager", "wrong number of parts"),
            (
                "codervpn manager 2.0,3.0",
                "is not compatible with peer versions",
            ),
            ("codervpn 0.1 manager", "unexpected role"),
            ("codervpn 1.1 supervisor", "unexpected role"),
            ("codervpn 1.1 tunnel", "unexpected role"),
            ("codervpn tunnel 1.3", "unexpected role"),
            ("codervpn  manager 1.3", "wrong number of parts"),
            ("codervpn manager 1.3\r", "invalid version list"),
            ("codervpn manager ", "no versions"),
        ];
        for (line, want) in cases {
            let err = validate_header(line, Role::Manager, &ours())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("validate header ({line}): ")),
                "{err}"
            );
            assert!(err.contains(want), "{line:?}: {err}");
        }
    }

    #[test]
    fn reader_returns_line_at_newline() {
        let mut r = HeaderReader::new();
        let mut got = None;
        for &b in b"codervpn manager 1.3\n" {
            got = r.push(b).unwrap();
        }
        assert_eq!(got.as_deref(), Some("codervpn manager 1.3"));
    }

    // checklist #6, #19
    #[test]
    fn reader_stops_after_256_bytes_without_newline() {
        let mut r = HeaderReader::new();
        for i in 0..MAX_HEADER_LEN - 1 {
            assert_eq!(r.push(b'x'), Ok(None), "byte {i}");
        }
        assert_eq!(r.push(b'x'), Err(HeaderTooLong));
    }

    #[test]
    fn reader_accepts_line_of_exactly_256_bytes() {
        let mut r = HeaderReader::new();
        for _ in 0..MAX_HEADER_LEN - 1 {
            r.push(b'x').unwrap();
        }
        assert_eq!(r.push(b'\n').unwrap().map(|l| l.len()), Some(255));
    }
}
