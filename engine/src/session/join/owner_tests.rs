//! The owner's shell on a paused tokio clock, with the clocks that tell a system sleep in
//! the test's hands: a jump between them must do what a manager's `Wake` does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Waker};

use codervpn_dns::{Zone, ZoneConfig};
use codervpn_proto::tailnet::DerpMap;
use codervpn_proto::{Connection, ManagerSide, TunnelSide, VersionList};

use super::*;
use crate::net::relay::RelayIn;
use crate::session::join::netinfo::RegionLatencies;
use crate::session::join::sleep::{ClockReading, SleepClocks};
use crate::session::node::NodeInfo;
use crate::session::peers::WorkspaceState;
use crate::session::rpc::ProbeHandle;

/// A running owner and what it reaches.
struct Harness {
    /// The data plane's end.
    wg: mpsc::Receiver<WgCommand>,
    /// The tailnet websocket's end.
    probe: ProbeHandle,
    /// How long the test's system has slept in all (the sleep clock's lead).
    slept: Arc<AtomicU64>,
    control: mpsc::Sender<Control>,
    _events: mpsc::Sender<Event>,
    _net: watch::Sender<NetReport>,
    _stop: watch::Sender<bool>,
    _relayed: mpsc::Receiver<RelayIn>,
    _tunnel: Connection<TunnelSide>,
    _manager: Connection<ManagerSide>,
}

/// What a wake leaves behind.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    rebinds: usize,
    other_commands: usize,
    probe: Option<Duration>,
}

impl Harness {
    /// No status update within a test.
    async fn start() -> Self {
        Self::start_with(Duration::from_secs(3600)).await
    }

    /// Status updates every `status_interval`.
    async fn start_with(status_interval: Duration) -> Self {
        let (a, b) = tokio::io::duplex(4096);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let (tunnel, manager) = tokio::join!(
            Connection::<TunnelSide>::handshake(br, bw, VersionList::current()),
            Connection::<ManagerSide>::handshake(ar, aw, VersionList::current()),
        );
        let (tunnel, manager) = (tunnel.unwrap(), manager.unwrap());
        let zone_cfg = ZoneConfig::new("coder").unwrap();
        let me = NodeInfo {
            id: 1,
            key: [1; 32],
            disco: [2; 32],
            preferred_derp: 1,
            derp_latency: Vec::new(),
            addresses: vec!["fd60:627a:a42b::1/128".parse().unwrap()],
            endpoints: Vec::new(),
        };
        let timings = OwnerTimings {
            status_interval,
            ..Default::default()
        };
        let core = OwnerCore::new(
            WorkspaceState::new("testy", zone_cfg.clone()),
            me,
            DerpMap::default(),
            1,
            timings,
            None,
            RegionLatencies::new([]),
        );
        // The clocks follow tokio's (paused) clock; the sleep clock leads by `slept`.
        let origin = tokio::time::Instant::now();
        let slept = Arc::new(AtomicU64::new(0));
        let lead = slept.clone();
        let clocks = SleepClocks::new(move || {
            let awake = origin.elapsed();
            let total = awake + Duration::from_secs(lead.load(Ordering::Relaxed));
            Some(ClockReading { awake, total })
        });
        let (wg_tx, wg) = mpsc::channel(64);
        let (relayed_tx, relayed) = mpsc::channel(1);
        let (stop_tx, stop) = watch::channel(false);
        let (net_tx, net) = watch::channel(NetReport::default());
        let probe = ProbeHandle::default();
        let owner = Owner {
            core,
            link: ManagerLink::new(tunnel.handle().clone()),
            zone: Arc::new(SharedZone::new(Zone::empty(zone_cfg))),
            wg: wg_tx.clone(),
            snapshot: watch::channel(PeerUpdate::default()).0,
            dialer: RegionDialer {
                headers: crate::session::join::derp_headers::DerpHeaders::new(
                    "http://127.0.0.1:1".parse().unwrap(),
                    ("Coder-Session-Token".into(), "t".into()),
                    Vec::new(),
                ),
                key: [1; 32],
                force_websockets: false,
                tls: None,
                wg: wg_tx,
                inbound: relayed_tx,
                stop,
            },
            net,
            netmon: None,
            tailnet_probe: probe.clone(),
            sleep: Some(SleepWatch::new(clocks)),
            requests: None,
        };
        let (events_tx, events) = mpsc::channel(4);
        let (control, control_rx) = mpsc::channel(4);
        tokio::spawn(owner.run(events, control_rx));
        Self {
            wg,
            probe,
            slept,
            control,
            _events: events_tx,
            _net: net_tx,
            _stop: stop_tx,
            _relayed: relayed,
            _tunnel: tunnel,
            _manager: manager,
        }
    }

    /// What reached the data plane and the tailnet websocket since the last look.
    fn seen(&mut self) -> Seen {
        let mut seen = Seen {
            rebinds: 0,
            other_commands: 0,
            probe: self.probe.take(&Context::from_waker(Waker::noop())),
        };
        while let Ok(cmd) = self.wg.try_recv() {
            match cmd {
                WgCommand::Rebind => seen.rebinds += 1,
                _ => seen.other_commands += 1,
            }
        }
        seen
    }
}

const NOTHING: Seen = Seen {
    rebinds: 0,
    other_commands: 0,
    probe: None,
};

/// What a wake does: the socket rebound, the tailnet websocket asked for a pong within
/// 3 s (DERP connections are probed by the data plane on the rebind).
const WOKEN: Seen = Seen {
    rebinds: 1,
    other_commands: 0,
    probe: Some(crate::net::derp::PROBE_TIMEOUT),
};

#[tokio::test(start_paused = true)]
async fn a_jump_of_the_sleep_clock_wakes_the_session_once() {
    let mut h = Harness::start().await;
    // Readings at 0 s and 5 s, the clocks together.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(h.seen(), NOTHING);
    // Ten minutes of suspend: the sleep clock jumps, tokio's clock does not.
    h.slept.store(600, Ordering::Relaxed);
    tokio::time::sleep(sleep::CHECK_INTERVAL).await;
    assert_eq!(h.seen(), WOKEN, "noticed at the next reading");
    // Measured from the last reading: no second wake.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.seen(), NOTHING);
}

#[tokio::test(start_paused = true)]
async fn clocks_that_move_together_wake_nothing() {
    let mut h = Harness::start().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Two seconds of drift are no sleep.
    h.slept.store(2, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.seen(), NOTHING);
}

#[tokio::test(start_paused = true)]
async fn a_manager_wake_does_the_same() {
    let mut h = Harness::start().await;
    h.control.send(Control::Wake).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.seen(), WOKEN);
}

/// The status update (stats fetched from the data plane, then a PeerUpdate to the manager)
/// comes every 5 s with the default timings, as Coder's tunnel sends one every 5 s.
#[tokio::test(start_paused = true)]
async fn the_status_update_comes_every_five_seconds() {
    let mut h = Harness::start_with(OwnerTimings::default().status_interval).await;
    let mut fetched_at = Vec::new();
    let origin = tokio::time::Instant::now();
    let end = origin + Duration::from_secs(21);
    while let Ok(Some(cmd)) = tokio::time::timeout_at(end, h.wg.recv()).await {
        if let WgCommand::Stats(reply) = cmd {
            fetched_at.push(origin.elapsed().as_secs());
            let _ = reply.send(Default::default());
        }
    }
    assert_eq!(fetched_at, [5, 10, 15, 20]);
}
