//! The manager (host) side of codervpn, as a library for the `codervpn` binary and its tests.

pub mod compat;
