//! The data plane's vocabulary: what it is built with ([`RunOptions`]), the commands it
//! takes ([`WgCommand`]), the snapshot it gives ([`WgStats`]) and what it learns about the
//! network ([`NetReport`]).

use std::net::SocketAddr;
use std::sync::Arc;

use codervpn_dns::SharedZone;

use tokio::sync::{oneshot, watch};

use super::derp::{DerpConnStats, DerpHandle};
use super::direct::DiscoDropped;
use super::disco::{DiscoPrivateKey, DiscoPublicKey, PathConfig};
use super::dns_intercept::DnsCounters;
use super::netcheck::{NetcheckStats, StunReport, StunServer};
use super::pings::PingReplyTx;
use super::relay::{Relay, RelayCounters};
use super::traffic::PathTraffic;
use super::wg::{Counters, PeerConfig, PeerStats};

/// Requests to the running data plane.
#[derive(Debug)]
pub enum WgCommand {
    UpsertPeer(PeerConfig),
    /// Upserts a peer reached through the DERP relay of `derp_region` (its endpoint, when
    /// not given, is the relay path). Needs [`RunOptions::relay`.
    UpsertRelayedPeer {
        config: PeerConfig,
        derp_region: i64,
    },
    /// Removes a peer (and its disco state).
    RemovePeer([u8; 32]),
    /// Gives a peer its disco key and the endpoints its node lists, so a direct path is
    /// looked for (needs [`RunOptions::disco`; send after the peer's upsert).
    SetPeerDisco {
        key: [u8; 32],
        disco: DiscoPublicKey,
        endpoints: Vec<SocketAddr>,
    },
    /// Our own endpoints, sent to peers in call-me-maybe.
    SetOwnEndpoints(Vec<SocketAddr>),
    /// The network changed (new addresses): distrust every direct path, ping again and
    /// re-STUN.
    NetworkChanged,
    /// Wake: close the UDP socket and bind a new one (the same port when it is free), then
    /// as [`WgCommand::NetworkChanged`].
    Rebind,
    /// The STUN servers to probe from the UDP socket (from the DERP map).
    SetStunServers(Vec<StunServer>),
    /// Our home DERP region changed (peers with no connection of their own go through it).
    SetHomeRegion(i64),
    /// Adds (or replaces) the connection to a DERP region; `home` marks our own.
    AddRelay {
        region: i64,
        handle: DerpHandle,
        home: bool,
    },
    Stats(oneshot::Sender<WgStats>),
    /// A disco ping to the peer holding `addr`, the way its packets go now (`codervpn
    /// ping`); the pong, or why there is none, goes to `reply`. Nothing answers when no
    /// pong comes: the asker times out.
    Ping {
        addr: std::net::IpAddr,
        reply: PingReplyTx,
    },
}

/// A snapshot of the data plane's state.
#[derive(Debug, Clone, Default)]
pub struct WgStats {
    pub peers: Vec<PeerStats>,
    pub dropped: Counters,
    /// Datagrams the UDP socket would not take (send buffer full, unreachable).
    pub udp_send_failed: u64,
    /// Packets the device would not take.
    pub device_write_failed: u64,
    /// Relayed packets that went nowhere.
    pub relay: RelayCounters,
    /// Datagrams that were not WireGuard and were not handed to it.
    pub not_wireguard: NotWireGuard,
    /// Disco packets dropped (unknown sender, forged, undecryptable), or all of them
    /// without [`RunOptions::disco` (then counted in `not_wireguard.disco` only).
    pub disco_dropped: DiscoDropped,
    /// STUN probing from the UDP socket.
    pub stun: NetcheckStats,
    /// WireGuard traffic by path.
    pub traffic: PathTraffic,
    /// The in-tunnel resolver.
    pub dns: DnsCounters,
    /// Our DERP connections by region.
    pub derp: Vec<(i64, DerpConnStats)>,
    pub home_region: Option<i64>,
}

/// What the data plane learnt about the network, for the session to publish
/// ([`RunOptions::report`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetReport {
    /// The UDP socket's port (it may change on [`WgCommand::Rebind`]).
    pub port: u16,
    /// The last STUN round with answers.
    pub stun: StunReport,
}

/// Disco and STUN packets arriving on the WireGuard paths (UDP or DERP), kept away from
/// WireGuard: disco goes to the direct-path state (with [`RunOptions::disco`), STUN to the
/// prober.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotWireGuard {
    /// Packets that look like disco (`TS💬` magic, 62-byte header), by UDP or DERP.
    pub disco: u64,
    /// STUN packets on the UDP socket.
    pub stun: u64,
}

/// What the data plane does besides WireGuard.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Answer queries to the in-tunnel resolver (`[fd60:627a:a42b::53]:53`, UDP and TCP)
    /// from this zone; they never reach a peer.
    pub dns: Option<Arc<SharedZone>>,
    /// Reach peers through DERP relays too.
    pub relay: Option<Relay>,
    /// Our disco key: answer disco and look for direct paths to peers given a disco key
    /// ([`WgCommand::SetPeerDisco`]). Without it disco packets are counted and dropped.
    pub disco: Option<DiscoPrivateKey>,
    /// Path timing and policy (`disable_direct` keeps every peer on DERP).
    pub paths: PathConfig,
    /// Where the socket's port and the STUN results go whenever they change.
    pub report: Option<watch::Sender<NetReport>>,
}
