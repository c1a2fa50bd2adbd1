//! Joining a Coder deployment from `StartRequest` (tailnet.md §1): REST login, the packet
//! device, the WireGuard data plane with DERP paths, the tailnet controller, network
//! settings, then the owner task that keeps it all in step.
//!
//! ```text
//!  controller (dial, streams, redial) ─Event─▶ owner (state, coordination) ─WgCommand─▶ runner
//!                         ▲ CoordinateRequest ─┘        │ PeerUpdate / zone            (device, UDP, DERP)
//! ```

pub mod controller;
mod coord_queue;
pub mod derp_headers;
pub mod netinfo;
pub mod owner;
pub mod owner_core;
mod rebind;
pub mod relays;
pub mod settings;
pub mod sleep;

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use codervpn_dns::{SharedZone, Zone, ZoneConfig, coder_addr};
use codervpn_proto::vpn::PeerUpdate;
use ipnet::IpNet;
use rand_core::{OsRng, RngCore};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use self::derp_headers::DerpHeaders;
use self::netinfo::RegionLatencies;
use super::api::{Api, TOKEN_HEADER};
use super::diag::{Diagnostics, Tap};
use super::node::NodeInfo;
use super::peers::WorkspaceState;
use super::rpc::DialOptions;
use super::{BoxFuture, Connector, ManagerLink, Session, StartParams};
use crate::connect::{self, DataPlane, DataPlaneSpec, DeviceSpec};
use crate::device::userspace::socks5_access::Access;
use crate::device::userspace::{self, StackHandle, UserspaceConfig};
use crate::net::derp::NodePrivateKey;
use crate::net::disco::{DiscoPrivateKey, PathConfig};

/// How a tunnel joins.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// `start` fails with the last dial error when the first tailnet dial has not worked
    /// by then (a little under the tunnel's own 60 s bound).
    pub first_dial_deadline: Duration,
    /// Serve the deployment's names under `coderlan.` too.
    pub coderlan_alias: bool,
    /// Userspace mode (`tunnel_file_descriptor = -1`): serve SOCKS5 here (names of
    /// workspaces resolve through the tunnel's zone).
    pub socks5: Option<SocketAddr>,
    /// Who may use that SOCKS5 server (default: the owner only).
    pub socks5_access: Access,
    /// Owner timings (status interval, READY timeout, LOST timeout).
    pub timings: owner::OwnerTimings,
    /// Trust for REST, the tailnet websocket and DERP over `https`; `None`: system roots
    /// plus `SSL_CERT_FILE` ([`crate::transport::tls::default_client_config`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Advertise loopback addresses as endpoints too (peers on the same host: tests).
    pub loopback_endpoints: bool,
    /// The session's node and disco private keys; `None` (the default, and upstream's
    /// way): fresh random keys for every session. Set for reproducible tests.
    pub keys: Option<(NodePrivateKey, DiscoPrivateKey)>,
}

impl Default for JoinOptions {
    fn default() -> Self {
        Self {
            first_dial_deadline: Duration::from_secs(55),
            coderlan_alias: true,
            socks5: None,
            socks5_access: Access::owner(),
            timings: owner::OwnerTimings::default(),
            tls: None,
            loopback_endpoints: false,
            keys: None,
        }
    }
}

/// The connector that joins real Coder deployments.
#[derive(Clone, Default)]
pub struct TailnetConnector {
    opts: Arc<JoinOptions>,
    /// The latest session's userspace stack (userspace mode only) and DNS zone, for
    /// in-process users such as `codervpn demo`.
    handles: Arc<Mutex<Option<SessionHandles>>>,
    /// The running session's diagnostics.
    diagnostics: Diagnostics,
}

/// What in-process users can reach of a running session: its userspace stack (userspace
/// mode only) and its DNS zone.
type SessionHandles = (Option<StackHandle>, Arc<SharedZone>);

impl TailnetConnector {
    pub fn new(opts: JoinOptions) -> Self {
        Self {
            opts: Arc::new(opts),
            handles: Arc::default(),
            diagnostics: Diagnostics::default(),
        }
    }

    /// The diagnostics of whichever session this connector runs (none yet: its calls
    /// fail until one starts).
    pub fn diagnostics(&self) -> Diagnostics {
        self.diagnostics.clone()
    }

    /// The userspace stack of the running session, if it runs in userspace mode.
    pub fn stack(&self) -> Option<StackHandle> {
        let h = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        h.as_ref().and_then(|(s, _)| s.clone())
    }

    /// Resolves a workspace name from the running session's zone (the one the in-tunnel
    /// resolver answers from).
    pub fn resolve(&self, name: &str) -> Option<std::net::IpAddr> {
        let h = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let (_, zone) = h.as_ref()?;
        match zone.load().lookup(name) {
            codervpn_dns::Lookup::Host(addrs) => addrs.first().map(|a| std::net::IpAddr::V6(*a)),
            _ => None,
        }
    }
}

impl Connector for TailnetConnector {
    fn connect(
        &self,
        params: StartParams,
        link: ManagerLink,
    ) -> BoxFuture<Result<Box<dyn Session>, String>> {
        let opts = self.opts.clone();
        let slot = self.handles.clone();
        let diagnostics = self.diagnostics.clone();
        let span = info_span!("join", url = %params.coder_url);
        Box::pin(
            async move {
                let (session, handles) = join(&opts, params, link, diagnostics).await?;
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(handles);
                Ok(Box::new(session) as Box<dyn Session>)
            }
            .instrument(span),
        )
    }
}

/// Tells every task of a session to stop when dropped (unless disarmed).
struct StopOnDrop(Option<watch::Sender<bool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.send(true);
        }
    }
}

/// A random address in `fd60:627a:a42b::/48` (`CoderServicePrefix.RandomAddr()`).
fn random_self_addr() -> Ipv6Addr {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    coder_addr(b)
}

async fn join(
    opts: &JoinOptions,
    params: StartParams,
    link: ManagerLink,
    diagnostics: Diagnostics,
) -> Result<(TailnetSession, SessionHandles), String> {
    let deadline = tokio::time::Instant::now() + opts.first_dial_deadline;
    let tls = match &opts.tls {
        Some(c) => c.clone(),
        None => crate::transport::tls::default_client_config().map_err(|e| e.to_string())?,
    };
    let api = Api::new(&params.coder_url, &params.api_token, &params.headers, &tls)
        .map_err(|e| e.to_string())?;
    let me = api.me().await.map_err(|e| e.to_string())?;
    let info = api.connection_info().await.map_err(|e| e.to_string())?;
    info!(user = %me.username, suffix = %info.hostname_suffix, regions = info.derp_map.regions.len(), "deployment reached");
    let mut zone_cfg = ZoneConfig::new(&info.hostname_suffix).map_err(|e| e.to_string())?;
    if !opts.coderlan_alias {
        zone_cfg = zone_cfg.without_aliases();
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut guard = StopOnDrop(Some(stop_tx));

    let (key, disco) = opts
        .keys
        .clone()
        .unwrap_or_else(|| (NodePrivateKey::generate(), DiscoPrivateKey::generate()));
    let self_addr = random_self_addr();
    let self_net = IpNet::from(std::net::IpAddr::V6(self_addr));
    let zone = Arc::new(SharedZone::new(Zone::empty(zone_cfg.clone())));

    let mut headers = vec![(TOKEN_HEADER.to_owned(), params.api_token.clone())];
    headers.extend(params.headers.iter().cloned());

    // The data plane.
    let device = if params.tunnel_fd >= 0 {
        DeviceSpec::HandedOver {
            fd: params.tunnel_fd,
        }
    } else {
        let mut cfg = UserspaceConfig::new(vec![self_net]);
        cfg.mtu = settings::TUNNEL_MTU as usize;
        // Only Coder's prefix is routed through the tunnel (as a TUN's route): anything
        // else (the internet, [::1]) fails at once instead of waiting for a timeout.
        let (net, len) = settings::CODER_ROUTE;
        let len = u8::try_from(len).map_err(|e| e.to_string())?;
        cfg.reachable = vec![IpNet::new(net.into(), len).map_err(|e| e.to_string())?];
        DeviceSpec::Userspace(cfg)
    };
    let mut stop_plane = stop_rx.clone();
    let plane = connect::start(
        DataPlaneSpec {
            relay: true,
            disco: Some(disco.clone()),
            loopback_endpoints: opts.loopback_endpoints,
            dns: Some(zone.clone()),
            paths: PathConfig {
                disable_direct: info.disable_direct_connections,
                ..PathConfig::default()
            },
            ..DataPlaneSpec::new(key.to_bytes(), device)
        },
        async move {
            let _ = stop_plane.wait_for(|s| *s).await;
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let DataPlane {
        commands: wg_tx,
        relay_inbound,
        stack,
        endpoints,
        report: net_rx,
        task,
        ..
    } = plane;
    let in_tx = relay_inbound.ok_or("the data plane has no relays")?;
    tokio::spawn(async move {
        if let Ok(Err(e)) = task.await {
            warn!(error = %e, "data plane stopped");
        }
    });
    if info.disable_direct_connections {
        info!("direct connections are disabled by the deployment; DERP only");
    }
    let endpoint_source = (!info.disable_direct_connections).then_some(owner::EndpointSource {
        loopback: opts.loopback_endpoints,
    });
    // Host network changes re-gather the endpoints at once (the 20 s poll stays).
    let netmon = match endpoint_source {
        Some(_) => crate::net::netmon::spawn()
            .inspect_err(|e| debug!(error = %e, "no network change monitor; polling only"))
            .ok(),
        None => None,
    };
    if let (Some(addr), Some(stack)) = (opts.socks5, &stack) {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot serve SOCKS5 on {addr}: {e}"))?;
        info!(%addr, "SOCKS5 proxy into the tunnel (workspace names resolve)");
        let connector = ZoneConnector {
            stack: stack.clone(),
            zone: zone.clone(),
        };
        let mut stop = stop_rx.clone();
        let access = opts.socks5_access.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = userspace::socks5::serve(listener, connector, access) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }

    // DERP: home region by latency, connected in the background.
    let measured = relays::measure(&info.derp_map).await;
    let home = measured
        .first()
        .map(|r| r.region)
        .or_else(|| info.derp_map.regions.keys().min().copied())
        .ok_or("the deployment's DERP map has no regions")?;
    info!(home, latencies = ?measured.iter().map(|r| (r.region, r.latency)).collect::<Vec<_>>(), "DERP home region");
    let dialer = relays::RegionDialer {
        headers: DerpHeaders::new(
            params.coder_url.clone(),
            (TOKEN_HEADER.to_owned(), params.api_token.clone()),
            params.headers.clone(),
        ),
        key: key.to_bytes(),
        force_websockets: info.derp_force_websockets,
        tls: Some(tls.clone()),
        wg: wg_tx.clone(),
        inbound: in_tx,
        stop: stop_rx.clone(),
    };

    // The control plane.
    let tailnet_probe = crate::session::rpc::ProbeHandle::default();
    let dial = DialOptions {
        headers,
        tls: Some(tls),
        probe: Some(tailnet_probe.clone()),
        ..Default::default()
    };
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let (first_tx, first_rx) = oneshot::channel();
    let (control_tx, control_rx) = watch::channel(controller::ControlStatus::default());
    let controller = tokio::spawn(
        controller::run(
            params.coder_url.clone(),
            dial,
            me.id,
            ev_tx,
            first_tx,
            control_tx,
            stop_rx.clone(),
        )
        .in_current_span(),
    );
    match tokio::time::timeout_at(deadline, first_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(_)) => return Err("the tailnet controller stopped before connecting".into()),
        Err(_) => {
            let last = control_rx.borrow().last_error.clone();
            return Err(format!(
                "no tailnet connection to {} within {}s; last error: {}",
                params.coder_url,
                opts.first_dial_deadline.as_secs(),
                last.as_deref().unwrap_or("none (the dial never finished)")
            ));
        }
    }

    // DERP after the tailnet (upstream's order: REST, tailnet websocket, then relays).
    dialer.spawn(&info.derp_map, home, true);

    // Network settings: the router's, then DNS (codervpn-protocol.md §8).
    link.network_settings(settings::router(self_addr, settings::TUNNEL_MTU))
        .await
        .map_err(|e| format!("applying the tunnel's address and route: {e}"))?;
    link.network_settings(settings::dns(&zone_cfg))
        .await
        .map_err(|e| format!("applying split DNS: {e}"))?;

    let latencies = RegionLatencies::new(measured.iter().map(|r| (r.region, r.latency)));
    let self_node = NodeInfo {
        id: (OsRng.next_u64() >> 1) as i64,
        key: *key.public_key().as_bytes(),
        disco: *disco.public_key().as_bytes(),
        preferred_derp: home,
        derp_latency: latencies.published(),
        addresses: vec![self_net],
        endpoints,
    };
    let (snap_tx, snap_rx) = watch::channel(PeerUpdate::default());
    let (ctl_tx, ctl_rx) = mpsc::channel(4);
    let core = owner_core::OwnerCore::new(
        WorkspaceState::new(&me.username, zone_cfg),
        self_node,
        info.derp_map.clone(),
        home,
        opts.timings.clone(),
        endpoint_source,
        latencies,
    );
    let owner = owner::Owner {
        core,
        link,
        zone: zone.clone(),
        wg: wg_tx,
        snapshot: snap_tx,
        dialer,
        net: net_rx,
        netmon,
        tailnet_probe,
        sleep: sleep::SleepWatch::system(),
        requests: None,
    };
    diagnostics.set(Some(Tap {
        wg: owner.wg.clone(),
        control: control_rx,
        net: owner.net.clone(),
        regions: info
            .derp_map
            .regions
            .iter()
            .map(|(id, r)| (*id, r.region_name.clone()))
            .collect(),
        derp_latency: measured.iter().map(|r| (r.region, r.latency)).collect(),
        direct_disabled: endpoint_source.is_none(),
        keys: (key.clone(), disco.clone()),
    }));
    let owner_task = tokio::spawn(owner.run(ev_rx, ctl_rx).in_current_span());
    let stop = guard.0.take().ok_or("session state lost")?;
    info!(addr = %self_addr, "joined the tailnet");
    Ok((
        TailnetSession {
            snapshot: snap_rx,
            stop,
            control: ctl_tx,
            controller,
            owner: owner_task,
            diagnostics,
        },
        (stack, zone),
    ))
}

/// Connects through the userspace stack; resolves workspace names from the zone.
#[derive(Clone)]
struct ZoneConnector {
    stack: StackHandle,
    zone: Arc<SharedZone>,
}

impl userspace::TcpConnector for ZoneConnector {
    type Stream = tokio::io::DuplexStream;

    fn connect(
        &self,
        to: SocketAddr,
    ) -> impl std::future::Future<Output = Result<Self::Stream, userspace::ConnectError>> + Send
    {
        let stack = self.stack.clone();
        async move { stack.connect(to).await }
    }

    fn resolve(&self, name: &str) -> Option<std::net::IpAddr> {
        match self.zone.load().lookup(name) {
            codervpn_dns::Lookup::Host(addrs) => addrs.first().map(|a| std::net::IpAddr::V6(*a)),
            _ => None,
        }
    }
}

/// A joined deployment.
pub struct TailnetSession {
    snapshot: watch::Receiver<PeerUpdate>,
    stop: watch::Sender<bool>,
    control: mpsc::Sender<owner::Control>,
    controller: tokio::task::JoinHandle<()>,
    owner: tokio::task::JoinHandle<()>,
    diagnostics: Diagnostics,
}

/// How long stop waits for `disconnect` to go out before cutting everything.
const STOP_GRACE: Duration = Duration::from_millis(800);

impl Session for TailnetSession {
    fn peer_snapshot(&self) -> PeerUpdate {
        self.snapshot.borrow().clone()
    }

    fn wake(&mut self) -> Result<(), String> {
        // DERP connections recover on their own; direct paths are re-probed and our
        // endpoints gathered again. The UDP socket is not rebound (no STUN yet).
        info!("wake: re-probing direct paths");
        if self.control.try_send(owner::Control::Wake).is_err() {
            warn!("wake: the session's owner is busy or gone; direct paths re-probe on their own");
        }
        Ok(())
    }

    fn shutdown(self: Box<Self>) -> BoxFuture<Result<(), String>> {
        Box::pin(async move {
            let TailnetSession {
                stop,
                control,
                controller,
                owner,
                diagnostics,
                ..
            } = *self;
            diagnostics.set(None);
            let (done_tx, done_rx) = oneshot::channel();
            let _ = tokio::time::timeout(STOP_GRACE, async {
                if control.send(owner::Control::Stop(done_tx)).await.is_ok() {
                    let _ = done_rx.await;
                }
                let _ = controller.await;
            })
            .await;
            let _ = stop.send(true);
            owner.abort();
            info!("left the tailnet");
            Ok(())
        })
    }
}
