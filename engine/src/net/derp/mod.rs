//! DERP: the relay every tailnet peer can reach over HTTP(S), addressing peers by node key
//! (tailnet.md §11, §13.3; Go: coder/tailscale `derp/`, `derp/derphttp/`).
//!
//! Sans-IO cores, tokio shells (docs/ARCHITECTURE.md "Principles"):
//!
//! | module | what |
//! |---|---|
//! | [`frame`] | frame codec: types, parsing, encoding, limits |
//! | [`decoder`] | [`FrameDecoder`]: cuts a stream into frames under one side's [`Policy`] |
//! | [`keys`] | node keys, the NaCl box, client/server info JSON |
//! | [`client_core`] | [`DerpClient`]: one client connection as a value you feed |
//! | [`server_core`] | [`ServerConn`]: one server-side connection as a value you feed |
//! | [`table`] | [`RelayTable`]: who is connected, who is owed a peer-gone |
//! | [`http`] | the HTTP/1.1 upgrade exchange, as bytes |
//! | [`client`] | tokio shell: [`client::connect`], reconnects with backoff |
//! | [`dial`] | one connection over [`crate::transport`]: upgrade or WebSocket; its options and errors |
//! | [`server`] | tokio shell: [`DerpServer`] (table task + a task per connection) |

pub mod client;
pub mod client_core;
pub mod decoder;
pub mod dial;
pub mod frame;
pub mod http;
pub mod keys;
#[cfg(any(test, feature = "test-servers"))]
pub mod server;
#[cfg(any(test, feature = "test-servers"))]
pub mod server_core;
#[cfg(any(test, feature = "test-servers"))]
mod server_table;
pub mod table;
mod transport;

#[cfg(any(test, feature = "test-servers"))]
pub use client::DetachedRelay;
pub use client::{
    DerpConnStats, DerpConnection, DerpEvent, DerpHandle, PROBE_TIMEOUT, WRITE_TIMEOUT, connect,
    connect_with,
};
pub use client_core::{ClientConfig, ClientEvent, DerpClient, DerpClientError};
pub use decoder::{FrameDecoder, Policy};
pub use dial::{ConnectError, ConnectOptions, DIAL_TIMEOUT, DerpTransport};
pub use frame::{Frame, FrameError, FrameType, PeerGoneReason};
pub use keys::{ClientInfo, NodePrivateKey, NodePublicKey, ServerInfo};
#[cfg(any(test, feature = "test-servers"))]
pub use server::{DerpServer, ServeError};
#[cfg(any(test, feature = "test-servers"))]
pub use server_core::{ServerConn, ServerConnConfig, ServerConnError, ServerConnEvent};
#[cfg(any(test, feature = "test-servers"))]
pub use server_table::{ClientSummary, PER_CLIENT_QUEUE_BYTES};
pub use table::RelayTable;
