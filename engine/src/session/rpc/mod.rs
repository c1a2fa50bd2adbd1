//! The tailnet control connection: WebSocket → yamux → dRPC (tailnet.md §4, §13.1, §13.2).
//!
//! - [`codec`]: dRPC varints, frames and packets (sans-IO).
//! - [`call`]: one dRPC call, either role (sans-IO).
//! - [`client`] / [`server`]: calls over yamux streams — unary, server stream and
//!   bidirectional stream — and a method router for the serving side.
//! - [`mux`]: the `yamux` crate configured like hashicorp/yamux's defaults.
//! - [`ws`]: the WebSocket as one byte stream, and serving an upgraded socket;
//!   [`keepalive`]: pinging a quiet websocket (sans-IO).
//! - [`dial`]: dialing `/api/v2/tailnet` (ws:// or wss://), typed upgrade errors.
//! - [`tailnet`]: the typed `coder.tailnet.v2.Tailnet` client and the service trait a server
//!   implements.
//!
//! Like Coder's `drpcsdk.MultiplexedConn`, every RPC opens its own yamux stream and runs
//! there as dRPC stream id 1.

pub mod call;
pub mod client;
pub mod codec;
pub mod dial;
mod driver;
pub mod keepalive;
pub mod mux;
#[cfg(any(test, feature = "test-servers"))]
pub mod server;
pub mod tailnet;
pub mod ws;

use std::io;

pub use call::{Call, CallError, CallEvent, Role};
pub use client::{BidiSender, BidiStream, Responses, RpcClient};
pub use codec::CODE_UNIMPLEMENTED;
pub use dial::{DialError, DialOptions};
pub use keepalive::{KeepAliveConfig, ProbeHandle};
pub use mux::{MuxClient, MuxError};
#[cfg(any(test, feature = "test-servers"))]
pub use server::{Requests, Router, Sink, Status};
pub use tailnet::TailnetClient;
#[cfg(any(test, feature = "test-servers"))]
pub use tailnet::TailnetService;
pub use ws::WsByteStream;

/// A client call that failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The server answered with an error packet.
    #[error("{path} failed on the server (code {code}): {text}")]
    Remote {
        path: String,
        code: u64,
        text: String,
    },
    #[error("{path}: the peer cancelled the call")]
    Canceled { path: String },
    #[error("{path}: the peer closed the call before replying")]
    Closed { path: String },
    #[error("{path}: the server ended the call without a reply")]
    NoReply { path: String },
    #[error("{path}: {source}")]
    Protocol {
        path: String,
        #[source]
        source: CallError,
    },
    #[error("{path}: cannot decode {message}: {source}")]
    Decode {
        path: String,
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{path}: the yamux stream failed: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: cannot open a yamux stream: {source}")]
    Open {
        path: String,
        #[source]
        source: MuxError,
    },
    /// The call had already ended (on either side) when this was asked of it.
    #[error("{path}: the call is over")]
    CallOver { path: String },
}

impl RpcError {
    /// The method path of the failed call.
    pub fn path(&self) -> &str {
        match self {
            Self::Remote { path, .. }
            | Self::Canceled { path }
            | Self::Closed { path }
            | Self::NoReply { path }
            | Self::Protocol { path, .. }
            | Self::Decode { path, .. }
            | Self::Io { path, .. }
            | Self::Open { path, .. }
            | Self::CallOver { path } => path,
        }
    }
}

/// Whether `err` says the server lacks the method (tailnet.md §4.2; coder/coder
/// `tailnet.IsDRPCUnimplementedError`): an error packet with code 12, or whose text contains
/// `unknown rpc: ` (drpcmux's answer to an unregistered path).
pub fn is_unimplemented(err: &RpcError) -> bool {
    match err {
        RpcError::Remote { code, text, .. } => {
            *code == CODE_UNIMPLEMENTED || text.contains("unknown rpc: ")
        }
        RpcError::Canceled { .. }
        | RpcError::Closed { .. }
        | RpcError::NoReply { .. }
        | RpcError::Protocol { .. }
        | RpcError::Decode { .. }
        | RpcError::Io { .. }
        | RpcError::Open { .. }
        | RpcError::CallOver { .. } => false,
    }
}

/// drpcmux's error text for an unregistered path: `protocol error: unknown rpc: "<path>"`,
/// the path quoted like Go's `%q`.
pub fn unknown_rpc_text(path: &str) -> String {
    format!("protocol error: unknown rpc: {}", go_quote(path))
}

/// Go's `strconv.Quote` for the characters a method path may hold: printable characters as
/// they are, `\"` and `\\`, the C escapes, `\xNN` for other control bytes, `\uNNNN` /
/// `\UNNNNNNNN` for other non-printable characters.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                if (c as u32) <= 0xffff {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_rpc_text_matches_drpcmux() {
        assert_eq!(
            unknown_rpc_text("/coder.tailnet.v2.Tailnet/PostTelemetry"),
            r#"protocol error: unknown rpc: "/coder.tailnet.v2.Tailnet/PostTelemetry""#
        );
        assert_eq!(
            unknown_rpc_text("a\"b\\c\nd\u{1}"),
            r#"protocol error: unknown rpc: "a\"b\\c\nd\x01""#
        );
    }

    #[test]
    fn unimplemented_is_code_12_or_unknown_rpc_text() {
        let remote = |code, text: &str| RpcError::Remote {
            path: "/p".into(),
            code,
            text: text.into(),
        };
        assert!(is_unimplemented(&remote(12, "Unimplemented")));
        assert!(is_unimplemented(&remote(0, &unknown_rpc_text("/p"))));
        assert!(!is_unimplemented(&remote(0, "boom")));
        assert!(!is_unimplemented(&RpcError::NoReply { path: "/p".into() }));
    }
}
