//! The data plane: the WireGuard peer set, the UDP socket and the loop that moves packets
//! between the device and the network, and the DERP relays.
//!
//! - [`wg`]: the WireGuard peer set (sans-IO, boringtun inside); [`runner`]: its tokio shell.
//! - [`derp`]: DERP relays — the frame codec, sans-IO client and server cores, and their tokio
//!   shells (tailnet.md §11, §13.3).
//! - [`disco`]: the disco codec and per-peer path machine; [`direct`]: their use in the
//!   runner (direct UDP paths, DERP fallback); [`endpoints`]: the addresses we advertise.
//!
//! How the tunnel reaches a deployment's servers (proxy, TLS, WebSocket) is [`crate::transport`].

pub mod command;
pub mod derp;
pub mod direct;
pub mod disco;
pub mod dns_intercept;
pub mod dns_tcp;
pub mod endpoints;
pub mod netcheck;
pub mod netmon;
pub mod outbox;
pub mod packet_queues;
pub mod path;
pub mod pings;
pub mod plane;
pub mod relay;
pub mod runner;
pub mod stun;
pub mod traffic;
pub mod udp;
pub mod udp_batch;
pub mod wg;
