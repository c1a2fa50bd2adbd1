//! The in-tunnel DNS responder (tailnet.md §10): a [`Zone`] built from workspace state, and
//! answers to DNS messages read from it. Sans-IO: bytes in, bytes out; the engine owns the
//! packets and the sockets.
//!
//! ```
//! use codervpn_dns::{AgentInfo, Transport, Zone, ZoneConfig};
//!
//! let agent = AgentInfo {
//!     id: codervpn_dns::parse_uuid("00000000-0000-0101-0000-000000000000").unwrap(),
//!     name: "w1a1".into(),
//!     workspace: "w1".into(),
//!     owner: "testy".into(),
//! };
//! let zone = Zone::new(ZoneConfig::new("coder")?, &[agent.clone()]);
//! assert_eq!(
//!     zone.agent_fqdns(&agent.id).unwrap(),
//!     ["w1.coder.", "w1a1.w1.me.coder.", "w1a1.w1.testy.coder."]
//! );
//! # let query = [0u8; 0];
//! let response: Option<Vec<u8>> = zone.answer(&query, Transport::UDP);
//! # Ok::<(), codervpn_dns::ConfigError>(())
//! ```

mod addr;
mod answer;
mod config;
mod shared;
pub mod tcp;
mod zone;

pub use addr::{
    CODER_DNS_ADDR, CODER_SERVICE_PREFIX, TAILSCALE_SERVICE_PREFIX, coder_addr, parse_uuid,
    tailscale_addr,
};
pub use answer::{Answered, DEFAULT_UDP_PAYLOAD, Outcome, TTL, Transport};
pub use config::{ConfigError, DEFAULT_ALIAS, DEFAULT_SUFFIX, MAX_SUFFIX_LEN, ZoneConfig};
pub use shared::SharedZone;
pub use zone::NEGATIVE_TTL;
pub use zone::{AgentInfo, CONNECT_MARKER, Lookup, NameError, Uuid, Zone, agent_fqdns};
