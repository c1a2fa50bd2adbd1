//! The CoderVPN manager ⇄ tunnel protocol: generated messages, sans-IO framing, handshake
//! and RPC bookkeeping, and a tokio [`Connection`] for either role.

pub mod connection;
#[cfg(unix)]
pub mod fd;
pub mod frame;
pub mod header;
pub mod manager;
pub mod rpc;
pub mod side;
pub mod version;

/// Messages of `schemas/vpn.proto` (package `vpn`).
#[allow(clippy::all, missing_docs)]
pub mod vpn {
    include!(concat!(env!("OUT_DIR"), "/vpn.rs"));
}

/// Messages of `schemas/tailnet.proto` (package `coder.tailnet.v2`).
#[allow(clippy::all, missing_docs, rustdoc::invalid_html_tags)]
pub mod tailnet {
    include!(concat!(env!("OUT_DIR"), "/coder.tailnet.v2.rs"));
}

pub use connection::{CloseReason, Connection, Handle, HandshakeError, Incoming, RpcError};
pub use header::Role;
pub use side::{ManagerSide, Side, TunnelSide};
pub use version::{Version, VersionList};
