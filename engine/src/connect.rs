//! The one place a data plane is put together: a [`DataPlaneSpec`] (packet device, UDP
//! port, relays, disco, DNS, first peers) in, a running [`crate::net::runner`] task and
//! its handles out. The session's join, `codervpn wg up` and the testbed's simulated
//! agents all start theirs here.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, RawFd};
use std::sync::Arc;

use codervpn_dns::SharedZone;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, warn};

use crate::device::userspace::{StackHandle, UserspaceConfig, UserspaceDevice, UserspaceError};
use crate::device::{Device, FdDevice, Framing};
use crate::net::disco::{DiscoPrivateKey, PathConfig};
use crate::net::endpoints::local_endpoints;
use crate::net::relay::{Relay, RelayIn};
use crate::net::runner::{self, NetReport, RunOptions, WgCommand};
use crate::net::udp::Udp;
use crate::net::wg::{PeerConfig, PeerSet};

/// Where the tunnel's packets enter and leave.
#[derive(Debug)]
pub enum DeviceSpec {
    /// A TUN (macOS: utun) descriptor a manager handed over (`tunnel_file_descriptor`):
    /// duplicated (the manager keeps its own), framed as [`Framing::of_handed_over`] says.
    HandedOver { fd: RawFd },
    /// A Linux TUN interface created here (with offloads when the kernel grants them); it
    /// goes, with its addresses and routes, when the data plane stops.
    #[cfg(target_os = "linux")]
    Tun { name: String },
    /// A smoltcp TCP/IP stack in this process ([`DataPlane::stack`]).
    Userspace(UserspaceConfig),
}

/// What data plane to start (no `Debug`: it holds the private key).
pub struct DataPlaneSpec {
    /// Our WireGuard (node) private key.
    pub private_key: [u8; 32],
    pub device: DeviceSpec,
    /// 0: any port.
    pub udp_port: u16,
    /// Reach peers through DERP relays too ([`WgCommand::AddRelay`] and
    /// [`DataPlane::relay_inbound`]).
    pub relay: bool,
    /// Answer disco and look for direct paths; unless `paths.disable_direct`, the UDP
    /// socket's interface addresses are our first endpoints ([`DataPlane::endpoints`]).
    pub disco: Option<DiscoPrivateKey>,
    /// Advertise loopback addresses as endpoints too (peers on the same host: tests).
    pub loopback_endpoints: bool,
    /// Answer the in-tunnel resolver from this zone.
    pub dns: Option<Arc<SharedZone>>,
    pub paths: PathConfig,
    /// Peers from the start (a wg-quick file's); more come as [`WgCommand`]s.
    pub peers: Vec<PeerConfig>,
}

impl DataPlaneSpec {
    /// Plain WireGuard on `device`: any UDP port, no relays, disco or DNS, no peers yet.
    pub fn new(private_key: [u8; 32], device: DeviceSpec) -> Self {
        Self {
            private_key,
            device,
            udp_port: 0,
            relay: false,
            disco: None,
            loopback_endpoints: false,
            dns: None,
            paths: PathConfig::default(),
            peers: Vec::new(),
        }
    }
}

/// A running data plane: it runs until the `shutdown` given to [`start`] completes (or it
/// fails), whether or not this is kept.
pub struct DataPlane {
    /// Requests to the runner (the task keeps a sender of its own).
    pub commands: mpsc::Sender<WgCommand>,
    /// Where DERP connections deliver ([`crate::net::relay::forward_events`]); with
    /// [`DataPlaneSpec::relay`].
    pub relay_inbound: Option<mpsc::Sender<RelayIn>>,
    /// With [`DeviceSpec::Userspace`].
    pub stack: Option<StackHandle>,
    /// With `DeviceSpec::Tun`: the interface's name as the kernel gave it.
    pub interface: Option<String>,
    /// The UDP socket's port at start ([`DataPlane::report`] follows rebinds).
    pub udp_port: u16,
    /// The endpoints the data plane starts with (see [`DataPlaneSpec::disco`]).
    pub endpoints: Vec<SocketAddr>,
    /// The socket's port and STUN results, whenever they change.
    pub report: watch::Receiver<NetReport>,
    /// The runner: `Ok` once `shutdown` completed, else what stopped it.
    pub task: JoinHandle<io::Result<()>>,
}

/// Why a data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("binding the UDP socket (port {port}): {source}")]
    Udp { port: u16, source: io::Error },
    #[error("duplicating tunnel_file_descriptor {fd}: {source}")]
    Dup { fd: RawFd, source: io::Error },
    #[error("creating the TUN interface {name} (are you root?): {source}")]
    Tun { name: String, source: io::Error },
    /// `what`: "tunnel_file_descriptor 5", "the TUN interface codervpn0".
    #[error("using {what} as a packet device: {source}")]
    Device { what: String, source: io::Error },
    #[error("setting up the userspace stack: {0}")]
    Userspace(#[from] UserspaceError),
}

/// Binds the UDP socket, builds the device and spawns the runner (in the current span)
/// until `shutdown` completes. Must be called inside a tokio runtime.
pub async fn start(
    spec: DataPlaneSpec,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<DataPlane, ConnectError> {
    let port = spec.udp_port;
    let (udp, udp_port) = Udp::bind(port)
        .and_then(|udp| udp.local_port().map(|p| (udp, p)))
        .map_err(|source| ConnectError::Udp { port, source })?;
    let mut peers = PeerSet::new(spec.private_key);
    for peer in spec.peers {
        peers.upsert_peer(peer);
    }
    let (commands, commands_rx) = mpsc::channel(256);
    let (disco, direct) = (spec.disco.is_some(), !spec.paths.disable_direct);
    let (relay_inbound, relay) = (spec.relay)
        .then(|| mpsc::channel(1024))
        .map(|(tx, rx)| (tx, Relay::new(rx)))
        .unzip();
    let (report_tx, report) = watch::channel(NetReport::default());
    let opts = RunOptions {
        dns: spec.dns,
        relay,
        disco: spec.disco,
        paths: spec.paths,
        report: Some(report_tx),
    };
    let parts = Parts(peers, udp, commands.clone(), commands_rx, opts);
    let device_error = |what: String| move |source| ConnectError::Device { what, source };
    let (task, stack, interface) = match spec.device {
        DeviceSpec::HandedOver { fd } => {
            let owned =
                crate::device::dup(fd).map_err(|source| ConnectError::Dup { fd, source })?;
            let framing = Framing::of_handed_over(owned.as_fd());
            let device = FdDevice::new(owned, framing)
                .map_err(device_error(format!("tunnel_file_descriptor {fd}")))?;
            (parts.spawn(device, shutdown), None, None)
        }
        #[cfg(target_os = "linux")]
        DeviceSpec::Tun { name } => {
            let (fd, actual, framing) = crate::device::linux_tun::create_tun(&name, true)
                .map_err(|source| ConnectError::Tun { name, source })?;
            let device = FdDevice::new(fd, framing)
                .map_err(device_error(format!("the TUN interface {actual}")))?;
            (parts.spawn(device, shutdown), None, Some(actual))
        }
        DeviceSpec::Userspace(cfg) => {
            let (device, stack) = UserspaceDevice::new(cfg)?;
            (parts.spawn(device, shutdown), Some(stack), None)
        }
    };
    let endpoints = if disco && direct {
        local_endpoints(udp_port, spec.loopback_endpoints)
            .inspect(|eps| info!(endpoints = ?eps, "advertising direct endpoints"))
            .unwrap_or_else(|e| {
                warn!(error = %e, "cannot list the interface addresses; no direct endpoints");
                Vec::new()
            })
    } else {
        Vec::new()
    };
    if disco {
        // The runner has not read a command yet: there is room.
        let _ = commands.try_send(WgCommand::SetOwnEndpoints(endpoints.clone()));
    }
    Ok(DataPlane {
        commands,
        relay_inbound,
        stack,
        interface,
        udp_port,
        endpoints,
        report,
        task,
    })
}

/// Everything the runner takes but the device and `shutdown`; the extra command sender
/// stays with the task (the runner would spin on a closed command channel).
struct Parts(
    PeerSet,
    Udp,
    mpsc::Sender<WgCommand>,
    mpsc::Receiver<WgCommand>,
    RunOptions,
);

impl Parts {
    fn spawn<D: Device + 'static>(
        self,
        device: D,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<io::Result<()>> {
        let Parts(peers, udp, keep, commands, opts) = self;
        let run = async move {
            let _keep = keep;
            runner::run(peers, device, udp, commands, opts, shutdown).await
        };
        tokio::spawn(run.in_current_span())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    use tokio::sync::oneshot;

    use super::*;

    fn userspace() -> DeviceSpec {
        DeviceSpec::Userspace(UserspaceConfig::new(vec!["10.9.0.1/24".parse().unwrap()]))
    }

    #[tokio::test]
    async fn a_session_plane_has_relays_endpoints_and_a_stack_and_stops_on_shutdown() {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let plane = start(
            DataPlaneSpec {
                relay: true,
                disco: Some(DiscoPrivateKey::generate()),
                loopback_endpoints: true,
                ..DataPlaneSpec::new([7; 32], userspace())
            },
            async {
                let _ = stop_rx.await;
            },
        )
        .await
        .unwrap();
        assert!(plane.stack.is_some() && plane.relay_inbound.is_some());
        assert!(plane.interface.is_none());
        assert_ne!(plane.udp_port, 0);
        assert!(plane.endpoints.iter().all(|e| e.port() == plane.udp_port));
        assert!(plane.endpoints.iter().any(|e| e.ip().is_loopback()));
        drop(stop_tx);
        plane.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn plain_wireguard_advertises_nothing_and_has_no_relays() {
        let plane = start(
            DataPlaneSpec::new([7; 32], userspace()),
            std::future::pending(),
        )
        .await
        .unwrap();
        assert!(plane.endpoints.is_empty() && plane.relay_inbound.is_none());
        plane.task.abort();
    }

    #[tokio::test]
    async fn a_handed_over_descriptor_is_duplicated_and_a_bad_one_named() {
        let (ours, _theirs) = UnixDatagram::pair().unwrap();
        let fd = ours.as_raw_fd();
        let spec = DataPlaneSpec::new([7; 32], DeviceSpec::HandedOver { fd });
        let plane = start(spec, std::future::pending()).await.unwrap();
        plane.task.abort();
        let _ = plane.task.await;
        // The manager's descriptor is still its own.
        ours.send(b"x").unwrap();
        let spec = DataPlaneSpec::new([7; 32], DeviceSpec::HandedOver { fd: -1 });
        let err = start(spec, std::future::pending()).await.err().unwrap();
        assert!(
            err.to_string()
                .starts_with("duplicating tunnel_file_descriptor -1: "),
            "{err}"
        );
    }
}
