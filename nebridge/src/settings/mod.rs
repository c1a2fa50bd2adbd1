//! Network settings from the tunnel: the merge model (sans-IO) and the Linux backend.

pub mod merge;

pub use merge::{Dns, InvalidSettings, IpSettings, NetworkSettings, Route};
