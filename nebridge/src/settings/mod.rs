//! Network settings from the tunnel: the merge model (sans-IO) and the Linux backend.

pub mod linux;
pub mod merge;

pub use linux::{ApplyError, LinuxNetworkConfig, Plan, SplitDns};
pub use merge::{Dns, InvalidSettings, IpSettings, NetworkSettings, Route};
