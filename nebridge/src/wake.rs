//! Wakes for `codervpn up`: `SIGUSR1` asks the tunnel for one by hand, and in the compat
//! modes a suspend does too. Our engine notices a suspend itself, in every mode (it compares
//! a clock that stops in sleep with one that does not: `engine/src/session/join/sleep.rs`);
//! Coder's tunnel, which the compat modes run, does not (on macOS its manager tells it), so
//! there `up` compares the same clocks with the engine's [`SleepWatch`]. Either sends the
//! tunnel `Wake` (protocol 1.3): rebind the UDP socket, re-STUN, re-probe direct paths,
//! probe the DERP and coordinator connections.

use std::time::Duration;

use codervpn_engine::host::{SLEEP_CHECK_INTERVAL, SleepWatch};

/// Why a wake is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeReason {
    /// The clocks say the system slept this long (compat modes only).
    Slept(Duration),
    /// `SIGUSR1`.
    Signal,
}

/// Resolves at the next wake (`SIGUSR1`, or a detected sleep when asked to watch for
/// them); call again for the next.
pub struct WakeWatch {
    sleep: Option<SleepWatch>,
    tick: tokio::time::Interval,
    usr1: tokio::signal::unix::Signal,
}

impl WakeWatch {
    /// `detect_sleeps`: compare the clocks here too — for a tunnel that does not notice a
    /// suspend itself (Coder's). Ours does; a second detector would only wake it twice.
    pub fn new(detect_sleeps: bool) -> std::io::Result<Self> {
        let usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        let mut tick = tokio::time::interval(SLEEP_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            sleep: detect_sleeps.then(SleepWatch::system).flatten(),
            tick,
            usr1,
        })
    }

    pub async fn next(&mut self) -> WakeReason {
        loop {
            tokio::select! {
                _ = self.tick.tick(), if self.sleep.is_some() => {
                    if let Some(slept) = self.sleep.as_mut().and_then(SleepWatch::check) {
                        return WakeReason::Slept(slept);
                    }
                }
                Some(()) = self.usr1.recv() => return WakeReason::Signal,
            }
        }
    }
}
