//! The data plane: the WireGuard peer set, the UDP socket, and the loop that moves packets
//! between the device and the network.

pub mod runner;
pub mod udp;
pub mod udp_batch;
pub mod wg;
