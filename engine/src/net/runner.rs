//! The WireGuard shell: one task owns the peer set, the packet device and the UDP socket,
//! and moves packets between them. Each wake-up drains up to [`BATCH`] packets per side.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, trace, warn};

use super::udp::Udp;
use super::wg::{Counters, Emit, PeerConfig, PeerSet, PeerStats};
use crate::device::Device;

/// Packets handled per side per wake-up before the other side gets a turn.
pub const BATCH: usize = 64;
/// How often the peers' timers run.
pub const TIMER_TICK: Duration = Duration::from_millis(250);
const BUF: usize = 65_536;

/// Requests to the running data plane.
#[derive(Debug)]
pub enum WgCommand {
    UpsertPeer(PeerConfig),
    RemovePeer([u8; 32]),
    Stats(oneshot::Sender<WgStats>),
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
}

/// Moves packets between `device` and `udp` through `peers` until `shutdown` completes.
pub async fn run<D: Device>(
    mut peers: PeerSet,
    device: D,
    udp: Udp,
    mut commands: mpsc::Receiver<WgCommand>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut dev_buf = vec![0u8; BUF];
    let mut net_buf = vec![0u8; BUF];
    let mut out = vec![0u8; BUF + 64];
    let mut io_stats = (0u64, 0u64);
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    info!(
        peers = peers.len(),
        port = udp.local_port().unwrap_or(0),
        "WireGuard data plane running"
    );
    loop {
        tokio::select! {
            r = device.recv(&mut dev_buf) => {
                let mut n = r.map_err(|e| io::Error::new(e.kind(), format!("reading the packet device: {e}")))?;
                for i in 0..BATCH {
                    peers.encapsulate(&dev_buf[..n], &mut out, &mut |e| emit(&udp, &device, &mut io_stats, e));
                    if i + 1 == BATCH {
                        break;
                    }
                    n = match device.try_recv(&mut dev_buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(io::Error::new(e.kind(), format!("reading the packet device: {e}"))),
                    };
                }
            }
            r = udp.recv_from(&mut net_buf) => {
                let mut got = r;
                for i in 0..BATCH {
                    match got {
                        Ok((n, from)) => {
                            trace!(%from, len = n, "datagram");
                            peers.decapsulate(from, &net_buf[..n], &mut out, &mut |e| emit(&udp, &device, &mut io_stats, e));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors surface here (ECONNREFUSED…): not fatal for a UDP server.
                        Err(e) => debug!(error = %e, "UDP receive error"),
                    }
                    if i + 1 == BATCH {
                        break;
                    }
                    got = udp.try_recv_from(&mut net_buf);
                }
            }
            _ = tick.tick() => {
                peers.update_timers(tokio::time::Instant::now().into_std(), &mut out, &mut |e| emit(&udp, &device, &mut io_stats, e));
            }
            cmd = commands.recv() => match cmd {
                Some(WgCommand::UpsertPeer(p)) => peers.upsert_peer(p),
                Some(WgCommand::RemovePeer(k)) => { peers.remove_peer(&k); }
                Some(WgCommand::Stats(tx)) => {
                    let _ = tx.send(WgStats {
                        peers: peers.stats().collect(),
                        dropped: peers.counters().clone(),
                        udp_send_failed: io_stats.0,
                        device_write_failed: io_stats.1,
                    });
                }
                None => {}
            },
            () = &mut shutdown => {
                info!("WireGuard data plane stopping");
                return Ok(());
            }
        }
    }
}

fn emit<D: Device>(udp: &Udp, device: &D, io_stats: &mut (u64, u64), e: Emit<'_>) {
    match e {
        Emit::Network { to, data } => {
            if let Err(err) = udp.try_send_to(data, to) {
                io_stats.0 += 1;
                if io_stats.0.is_power_of_two() {
                    warn!(%to, error = %err, failures = io_stats.0, "UDP send failed");
                }
            }
        }
        Emit::Tunnel(data) => {
            if let Err(err) = device.try_send(data) {
                io_stats.1 += 1;
                if io_stats.1.is_power_of_two() {
                    warn!(error = %err, failures = io_stats.1, "device write failed");
                }
            }
        }
    }
}
