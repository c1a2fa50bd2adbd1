//! The data plane: packet relays and paths to peers.
//!
//! - [`derp`]: DERP relays — the frame codec, sans-IO client and server cores, and their tokio
//!   shells (tailnet.md §11, §13.3).

pub mod derp;
