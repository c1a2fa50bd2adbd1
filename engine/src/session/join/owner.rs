//! The session's owner task: the tokio shell around [`OwnerCore`], which holds the
//! workspace state, the agents' nodes and our own. It feeds the core what happens —
//! controller events, the data plane's reports and stats, wakes, its timers — and carries
//! out the [`Action`]s the core queues: coordinate requests, data-plane commands,
//! PeerUpdates to the manager, the DNS zone, DERP dials. Every [`sleep::CHECK_INTERVAL`] it
//! compares the system's clocks ([`super::sleep`]): a suspend is handled as a wake, in
//! every mode, whether or not a manager sends one.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use codervpn_dns::SharedZone;
use codervpn_proto::vpn::PeerUpdate;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info};

use super::controller::Event;
use super::coord_queue::CoordSender;
use super::netinfo;
use super::owner_core::{Action, OwnerCore};
pub use super::owner_core::{EndpointSource, OwnerTimings};
use super::relays::RegionDialer;
use super::sleep::{self, SleepWatch};
use crate::net::runner::{NetReport, WgCommand};
use crate::session::ManagerLink;

/// Requests from the session handle.
pub enum Control {
    /// Send `disconnect`, then answer.
    Stop(oneshot::Sender<()>),
    /// The system woke up: rebind the UDP socket, re-STUN, gather our endpoints again and
    /// re-probe every direct path.
    Wake,
}

/// How often our interface addresses are looked at again.
const ENDPOINT_REFRESH: Duration = Duration::from_secs(20);

/// What the owner's actions go to.
pub struct Owner {
    pub core: OwnerCore,
    pub link: ManagerLink,
    pub zone: Arc<SharedZone>,
    pub wg: mpsc::Sender<WgCommand>,
    pub snapshot: watch::Sender<PeerUpdate>,
    pub dialer: RegionDialer,
    /// The data plane's UDP port and STUN results.
    pub net: watch::Receiver<NetReport>,
    /// Host network changes ([`crate::net::netmon`]); `None` where there is no monitor
    /// or direct connections are off.
    pub netmon: Option<mpsc::Receiver<()>>,
    /// Probes the tailnet websocket on a wake (a silent one is redialled).
    pub tailnet_probe: crate::session::rpc::ProbeHandle,
    /// Notices a system sleep ([`SleepWatch::system`]); `None` where the platform has no
    /// clocks to compare.
    pub sleep: Option<SleepWatch>,
    pub(super) requests: Option<CoordSender>,
}

impl Owner {
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut control: mpsc::Receiver<Control>,
    ) {
        let mut status = tokio::time::interval(self.core.timings.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        status.tick().await;
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        let mut refresh = tokio::time::interval(ENDPOINT_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        // The first tick is now: the clocks' first reading.
        let mut sleep_check = tokio::time::interval(sleep::CHECK_INTERVAL);
        sleep_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.act().await;
        let mut net_open = true;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Event::Connected { requests }) => {
                        self.requests = Some(requests);
                        self.core.handle_connected();
                    }
                    Some(Event::Disconnected { error }) => {
                        self.requests = None;
                        self.core.handle_disconnected(&error);
                    }
                    Some(Event::Workspace { update, snapshot }) => {
                        self.core.handle_workspace(&update, snapshot);
                    }
                    Some(Event::Coordinate(resp)) => self.core.handle_coordinate(Instant::now(), resp),
                    Some(Event::DerpMap(map)) => self.core.handle_derp_map(map),
                    None => return,
                },
                c = control.recv() => match c {
                    Some(Control::Stop(done)) => {
                        self.core.handle_stop();
                        self.act().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(Control::Wake) => self.core.handle_wake(Instant::now()),
                    None => return,
                },
                r = self.net.changed(), if net_open => match r {
                    Ok(()) => {
                        let report = self.net.borrow_and_update().clone();
                        self.core.handle_net_report(Instant::now(), report);
                    }
                    Err(_) => net_open = false,
                },
                _ = refresh.tick() => self.core.handle_refresh(self.net.borrow().clone()),
                Some(()) = next_change(&mut self.netmon) => {
                    debug!("host network changed: gathering endpoints again");
                    self.core.handle_refresh(self.net.borrow().clone());
                }
                _ = status.tick() => self.core.handle_status_tick(),
                _ = housekeeping.tick() => self.core.handle_housekeeping(Instant::now()),
                _ = sleep_check.tick(), if self.sleep.is_some() => self.check_sleep(),
            }
            self.act().await;
        }
    }

    /// Reads the clocks; after a sleep, does what a manager's `Wake` does.
    fn check_sleep(&mut self) {
        let Some(slept) = self.sleep.as_mut().and_then(SleepWatch::check) else {
            return;
        };
        let secs = slept.as_secs();
        info!(
            slept_secs = secs,
            "the system slept for {secs} s: re-checking connections and paths"
        );
        self.core.handle_wake(Instant::now());
    }

    /// Carries out what the core queued, in order.
    async fn act(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Coordinate(req) => {
                    if let Some(r) = &self.requests {
                        let _ = r.send(req);
                    }
                }
                Action::Wg(cmd) => {
                    let _ = self.wg.send(cmd).await;
                }
                Action::Zone(zone) => {
                    self.zone.store(zone);
                }
                Action::Snapshot(s) => {
                    let _ = self.snapshot.send(s);
                }
                Action::PeerUpdate(u) => {
                    if let Err(e) = self.link.peer_update(u).await {
                        debug!(error = %e, "peer update not delivered");
                    }
                }
                Action::Dial { region, home } => {
                    self.dialer.spawn(&self.core.derp_map, region, home);
                }
                Action::ResolveStun(map) => {
                    let wg = self.wg.clone();
                    tokio::spawn(async move {
                        let servers = netinfo::stun_servers(&map).await;
                        debug!(count = servers.len(), "STUN servers from the DERP map");
                        let _ = wg.send(WgCommand::SetStunServers(servers)).await;
                    });
                }
                Action::ProbeTailnet => self.tailnet_probe.probe(crate::net::derp::PROBE_TIMEOUT),
                Action::FetchStats => {
                    let (tx, rx) = oneshot::channel();
                    if self.wg.send(WgCommand::Stats(tx)).await.is_err() {
                        continue;
                    }
                    let Ok(stats) = rx.await else { continue };
                    self.core
                        .handle_stats(Instant::now(), SystemTime::now(), stats);
                }
            }
        }
    }
}

/// The next change from the monitor; pending for ever without one (or once it has ended).
async fn next_change(netmon: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match netmon {
        Some(rx) => match rx.recv().await {
            Some(()) => Some(()),
            None => {
                *netmon = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "owner_tests.rs"]
mod tests;
