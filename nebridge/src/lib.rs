//! The codervpn manager (host) side as a library: compat mode's download → verify →
//! load, the embedded engine, interface configuration, network settings from the tunnel,
//! and the status surface. The `codervpn` binary builds on it.

pub mod compat;
#[cfg(target_os = "linux")]
pub mod daemon_net;
pub mod diag;
pub mod embedded;
#[cfg(target_os = "linux")]
pub mod netlink;
pub mod settings;
pub mod status;
pub mod wake;
