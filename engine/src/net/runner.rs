//! The data plane's tokio shell: one task owns the packet device, the UDP socket and the
//! core ([`Plane`]); it waits for whichever is ready — a device packet, datagrams, a relayed
//! packet, a timer tick, a command — feeds it to the core, then pulls what the core queued
//! ([`Plane::out`]) and writes it: device packets to the device, UDP batches with one
//! `sendmsg` each. Each wake-up drains up to [`BATCH`] packets per side.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, trace, warn};

pub use super::command::{NetReport, NotWireGuard, RunOptions, WgCommand, WgStats};
use super::plane::{Control, Plane};
use super::relay::{Relay, RelayIn};
use super::udp::Udp;
use super::udp_batch::{self, SendBatch};
use super::wg::PeerSet;
use crate::device::Device;

/// Packets handled per side per wake-up before the other side gets a turn.
pub const BATCH: usize = 64;
/// How often the peers' timers run.
pub const TIMER_TICK: Duration = Duration::from_millis(250);
const BUF: usize = 65_536;

/// Moves packets between `device` and `udp` (and the relays of `opts`) through `peers`
/// until `shutdown` completes.
pub async fn run<D: Device>(
    peers: PeerSet,
    device: D,
    mut udp: Udp,
    mut commands: mpsc::Receiver<WgCommand>,
    mut opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let report = opts.report.take();
    let mut plane = Plane::new(peers, opts, now());
    let mut shell = Shell {
        device,
        gso: true,
        report,
    };
    shell.publish(&udp, &mut plane);
    let mut dev_buf = vec![0u8; BUF];
    let mut net_buf = vec![0u8; BUF];
    let gro = udp.enable_gro();
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut commands_open = true;
    info!(
        peers = plane.peer_count(),
        port = udp.local_port().unwrap_or(0),
        gro,
        "WireGuard data plane running"
    );
    loop {
        tokio::select! {
            r = shell.device.recv(&mut dev_buf) => {
                let mut n = r.map_err(device_error)?;
                let now = now();
                for i in 0..BATCH {
                    plane.handle_device_packet(now, &dev_buf[..n]);
                    if i + 1 == BATCH {
                        break;
                    }
                    n = match shell.device.try_recv(&mut dev_buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(device_error(e)),
                    };
                }
            }
            r = udp.readable() => {
                r.map_err(|e| io::Error::new(e.kind(), format!("waiting on the UDP socket: {e}")))?;
                let now = now();
                for _ in 0..BATCH {
                    match udp.try_recv_batch(&mut net_buf) {
                        Ok((n, from, segment)) => {
                            trace!(%from, len = n, segment, "datagrams");
                            for datagram in net_buf[..n].chunks(segment) {
                                plane.handle_udp(now, from, datagram);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors surface here (ECONNREFUSED…): not fatal for a UDP server.
                        Err(e) => debug!(error = %e, "UDP receive error"),
                    }
                }
            }
            Some(first) = next_relayed(plane.relay_mut()) => {
                let now = now();
                let mut next = Some(first);
                let mut n = 0;
                while let Some(r) = next {
                    plane.handle_relayed(now, &r);
                    n += 1;
                    next = if n < BATCH { plane.relay_mut().and_then(Relay::try_recv) } else { None };
                }
            }
            _ = tick.tick() => plane.handle_timeout(now()),
            cmd = commands.recv(), if commands_open => {
                let Some(cmd) = cmd else {
                    // Nobody can command the plane any more; it runs until shutdown.
                    commands_open = false;
                    continue;
                };
                if plane.handle_command(now(), cmd) == Control::Rebind {
                    // Flush first: what was queued was meant for the old socket's peers too.
                    shell.flush(&udp, &mut plane);
                    udp = rebound(udp)?;
                    let gro = udp.enable_gro();
                    debug!(gro, "receive coalescing on the new socket");
                    plane.rebound(now());
                }
            }
            () = &mut shutdown => {
                info!("WireGuard data plane stopping");
                return Ok(());
            }
        }
        shell.flush(&udp, &mut plane);
        shell.publish(&udp, &mut plane);
    }
}

/// What the shell owns besides the socket (which a rebind replaces).
struct Shell<D> {
    device: D,
    /// Segmentation offload still works (the kernel may refuse it once).
    gso: bool,
    report: Option<watch::Sender<NetReport>>,
}

impl<D: Device> Shell<D> {
    /// Writes what the core queued: device packets, then UDP batches.
    fn flush(&mut self, udp: &Udp, plane: &mut Plane) {
        let out = &mut plane.out;
        let mut device_failed = 0u64;
        let device = &self.device;
        out.drain_tunnel(|p| {
            if let Err(err) = device.try_send(p) {
                device_failed += 1;
                trace!(error = %err, "device write failed");
            }
        });
        if let Err(err) = device.flush() {
            device_failed += 1;
            trace!(error = %err, "device flush failed");
        }
        if device_failed > 0 {
            let before = out.device_write_failed;
            out.device_write_failed += device_failed;
            if before.leading_zeros() != out.device_write_failed.leading_zeros() {
                warn!(failures = out.device_write_failed, "device writes failed");
            }
        }
        let (fd, gso) = (udp.raw_fd(), &mut self.gso);
        let mut udp_failed = 0u64;
        out.drain_udp(|batch: &mut SendBatch| {
            udp_failed += udp_batch::flush(fd, batch, gso) as u64;
        });
        if udp_failed > 0 {
            let before = out.udp_send_failed;
            out.udp_send_failed += udp_failed;
            if before.leading_zeros() != out.udp_send_failed.leading_zeros() {
                warn!(failures = out.udp_send_failed, "UDP sends failed");
            }
        }
    }

    /// Publishes the socket's port and the STUN report when they changed.
    fn publish(&self, udp: &Udp, plane: &mut Plane) {
        let Some(stun) = plane.take_report() else {
            return;
        };
        if let Some(r) = &self.report {
            let now = NetReport {
                port: udp.local_port().unwrap_or(0),
                stun: stun.clone(),
            };
            r.send_if_modified(|old| {
                let changed = *old != now;
                *old = now;
                changed
            });
        }
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn device_error(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("reading the packet device: {e}"))
}

/// The next packet a relay delivered; never resolves without relays.
async fn next_relayed(relay: Option<&mut Relay>) -> Option<RelayIn> {
    match relay {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// A new UDP socket in place of `old`: on the same port when it is still free, else on
/// any (the session then publishes the new port).
fn rebound(old: Udp) -> io::Result<Udp> {
    let port = old.local_port().unwrap_or(0);
    drop(old);
    let udp = Udp::bind(port)
        .or_else(|e| {
            warn!(port, error = %e, "cannot rebind the UDP port; taking another");
            Udp::bind(0)
        })
        .map_err(|e| io::Error::new(e.kind(), format!("rebinding the UDP socket: {e}")))?;
    info!(port = udp.local_port().unwrap_or(0), "UDP socket rebound");
    Ok(udp)
}
