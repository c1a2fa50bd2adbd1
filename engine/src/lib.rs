//! The codervpn tunnel engine.
//!
//! - [`tunnel`]: the tunnel role of the CoderVPN protocol — manager requests in, session
//!   lifecycle, peer updates, logs out.
//! - [`session`]: joining a Coder deployment (the control plane).
//! - [`connect`]: the one place a data plane is put together (device, UDP socket, relays,
//!   disco, DNS) and started.
//! - [`net`]: the data plane: WireGuard, direct UDP paths and DERP relays.
//! - [`transport`]: the one dialer (proxy, TCP, TLS, WebSocket) for the tailnet websocket
//!   and DERP.
//! - [`logs`]: forwarding `tracing` records to the manager as `Log` messages.
//! - [`embedded`]: the manager side of an in-process tunnel, over the CoderVPN protocol.
//! - [`host`]: the API the `codervpn` binary and the C API use (nothing else).
//! - [`ffi`]: the `OpenTunnel(readFD, writeFD)` export that makes this crate a drop-in for
//!   Coder's Go dylib.

pub mod coalesce;
pub mod connect;
pub mod device;
pub mod embedded;
pub mod ffi;
pub mod host;
pub mod logs;
pub mod net;
pub mod session;
pub mod transport;
pub mod tunnel;

/// The Coder release this build matches, as `coder version --output=json` reports it.
/// Set `CODERVPN_CODER_VERSION` at build time to match another release.
pub const CODER_VERSION: &str = match option_env!("CODERVPN_CODER_VERSION") {
    Some(v) => v,
    None => "v2.24.3",
};
