//! Wake detection for `codervpn up` on Linux, where no manager tells the tunnel the laptop
//! woke (macOS's manager sends Wake itself): while the system sleeps `CLOCK_BOOTTIME`
//! advances and `CLOCK_MONOTONIC` does not, so a gap between the two clocks' progress is a
//! suspend. `SIGUSR1` asks for the same by hand. Either sends the tunnel `Wake` (protocol
//! 1.3): rebind the UDP socket, re-STUN, re-probe direct paths.

use std::time::Duration;

/// How often the clocks are compared.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// A gap this large between the clocks' progress counts as a sleep.
pub const MIN_SLEEP: Duration = Duration::from_secs(3);

/// Compares the clocks' progress between observations (sans-IO).
#[derive(Debug, Clone, Copy)]
pub struct SleepDetector {
    last: Option<(Duration, Duration)>,
}

impl Default for SleepDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl SleepDetector {
    pub const fn new() -> Self {
        Self { last: None }
    }

    /// Takes the current `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` readings; returns how long
    /// the system slept since the last observation, when that is at least [`MIN_SLEEP`].
    pub fn observe(&mut self, monotonic: Duration, boottime: Duration) -> Option<Duration> {
        let prev = self.last.replace((monotonic, boottime));
        let (m0, b0) = prev?;
        let awake = monotonic.saturating_sub(m0);
        let total = boottime.saturating_sub(b0);
        let slept = total.saturating_sub(awake);
        (slept >= MIN_SLEEP).then_some(slept)
    }
}

/// Reads `clock`.
pub fn now(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; both clocks exist on Linux ≥ 2.6.39.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Why a wake is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeReason {
    /// The clocks say the system slept this long.
    Slept(Duration),
    /// `SIGUSR1`.
    Signal,
}

/// Resolves at the next wake (a detected sleep or `SIGUSR1`); call again for the next.
pub struct WakeWatch {
    detector: SleepDetector,
    tick: tokio::time::Interval,
    usr1: tokio::signal::unix::Signal,
}

impl WakeWatch {
    pub fn new() -> std::io::Result<Self> {
        let usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            detector: SleepDetector::new(),
            tick,
            usr1,
        })
    }

    pub async fn next(&mut self) -> WakeReason {
        loop {
            tokio::select! {
                _ = self.tick.tick() => {
                    let m = now(libc::CLOCK_MONOTONIC);
                    let b = now(libc::CLOCK_BOOTTIME);
                    if let Some(slept) = self.detector.observe(m, b) {
                        return WakeReason::Slept(slept);
                    }
                }
                Some(()) = self.usr1.recv() => return WakeReason::Signal,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn clocks_moving_together_are_no_sleep() {
        let mut d = SleepDetector::new();
        assert_eq!(d.observe(s(100), s(200)), None, "first reading");
        assert_eq!(d.observe(s(105), s(205)), None);
        assert_eq!(
            d.observe(s(110), s(212)),
            None,
            "2 s of drift is not a sleep"
        );
    }

    #[test]
    fn boottime_running_ahead_is_a_sleep_of_the_difference() {
        let mut d = SleepDetector::new();
        d.observe(s(100), s(200));
        assert_eq!(d.observe(s(105), s(805)), Some(s(600)));
        assert_eq!(
            d.observe(s(110), s(810)),
            None,
            "measured from the last reading"
        );
    }

    #[test]
    fn the_real_clocks_show_no_sleep_over_a_short_wait() {
        let mut d = SleepDetector::new();
        d.observe(now(libc::CLOCK_MONOTONIC), now(libc::CLOCK_BOOTTIME));
        std::thread::sleep(Duration::from_millis(20));
        let m = now(libc::CLOCK_MONOTONIC);
        assert!(m > Duration::ZERO);
        assert_eq!(d.observe(m, now(libc::CLOCK_BOOTTIME)), None);
    }
}
