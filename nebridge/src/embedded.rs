//! The embedded mode (our engine in-process over the CoderVPN protocol) lives in the
//! engine crate so the C API can share it; re-exported here for the host's callers.

pub use codervpn_engine::host::embedded::*;
