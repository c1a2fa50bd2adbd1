//! Disco: the NaCl-box-sealed ping / pong / call-me-maybe messages peers exchange to find a
//! direct UDP path (tailnet.md §11, §13.4; coder/tailscale `disco/`, `wgengine/magicsock/`).
//!
//! - [`codec`]: the packet format — [`seal`], [`open`], [`looks_like_disco`].

pub mod codec;

pub use codec::{
    CallMeMaybe, DiscoError, DiscoPrivateKey, DiscoPublicKey, Message, Ping, Pong, TxId,
    looks_like_disco, open, seal, seal_with_nonce, sender,
};

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod interop_tests;
