//! The data plane: the WireGuard peer set and the loop that moves packets between the
//! device and the network.

pub mod wg;
