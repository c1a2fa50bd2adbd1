//! The codervpn manager (host) side as a library: interface configuration, network
//! settings from the tunnel, and the status surface. The `codervpn` binary builds on it.

pub mod embedded;
pub mod netlink;
pub mod settings;
pub mod status;
