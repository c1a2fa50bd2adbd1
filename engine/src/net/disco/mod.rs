//! Disco: the NaCl-box-sealed ping / pong / call-me-maybe messages peers exchange to find a
//! direct UDP path (tailnet.md §11, §13.4; coder/tailscale `disco/`, `wgengine/magicsock/`).
//!
//! - [`codec`]: the packet format — [`seal`], [`open`], [`looks_like_disco`].
//! - [`path`]: the per-peer path state machine (candidate endpoints, pings, pongs, the best
//!   path, DERP fallback). Sans-IO: time is passed in, transmits are polled out.

pub mod codec;
pub mod path;

pub use codec::{
    CallMeMaybe, DiscoError, DiscoPrivateKey, DiscoPublicKey, Message, Ping, Pong, TxId,
    looks_like_disco, open, seal, seal_with_nonce, sender,
};
pub use path::{Path, PathConfig, PathStats, PeerPaths, Transmit, Via};

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod interop_tests;
#[cfg(test)]
mod path_tests;
