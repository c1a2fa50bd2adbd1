//! Noticing that the system slept, in every mode (`codervpn up`, `vpn-daemon run`, the C
//! API): the session's timers (tokio's, WireGuard's) run on a clock that stands still
//! through a suspend, so after one they believe almost no time passed while DERP and
//! coordinator connections, WireGuard sessions and UDP NAT mappings may be long dead. Two
//! clocks tell: one that stops while the system sleeps and one that does not — a gap
//! between their progress is a sleep, and the owner ([`super::owner`]) then does what a
//! manager's `Wake` does.
//!
//! | platform | stops in sleep | counts sleep |
//! |---|---|---|
//! | Linux, Android | `CLOCK_MONOTONIC` | `CLOCK_BOOTTIME` |
//! | macOS, iOS | `CLOCK_UPTIME_RAW` | `CLOCK_MONOTONIC` (Darwin's includes sleep) |
//! | others | — no detection ([`SleepClocks::system`] is `None`) | |

use std::sync::Arc;
use std::time::Duration;

/// How often the clocks are compared.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// A gap this large between the clocks' progress counts as a sleep.
pub const MIN_SLEEP: Duration = Duration::from_secs(3);

/// The two clocks, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// A clock that stands still while the system sleeps.
    pub awake: Duration,
    /// A clock that counts the sleep too.
    pub total: Duration,
}

/// Compares the clocks' progress between readings (sans-IO).
#[derive(Debug, Clone, Copy, Default)]
pub struct SleepDetector {
    last: Option<ClockReading>,
}

impl SleepDetector {
    pub const fn new() -> Self {
        Self { last: None }
    }

    /// Takes a reading; returns how long the system slept since the last one, when that
    /// is at least [`MIN_SLEEP`].
    pub fn observe(&mut self, now: ClockReading) -> Option<Duration> {
        let prev = self.last.replace(now)?;
        let awake = now.awake.saturating_sub(prev.awake);
        let total = now.total.saturating_sub(prev.total);
        let slept = total.saturating_sub(awake);
        (slept >= MIN_SLEEP).then_some(slept)
    }
}

/// Where the readings come from: the system's clocks, or a test's.
#[derive(Clone)]
pub struct SleepClocks(Arc<dyn Fn() -> Option<ClockReading> + Send + Sync>);

impl std::fmt::Debug for SleepClocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SleepClocks")
    }
}

impl SleepClocks {
    /// Readings from `read` (`None`: the clocks could not be read this time).
    pub fn new(read: impl Fn() -> Option<ClockReading> + Send + Sync + 'static) -> Self {
        Self(Arc::new(read))
    }

    /// The system's pair of clocks (see the module documentation); `None` where there is
    /// none to compare.
    pub fn system() -> Option<Self> {
        system::read().map(|_| Self::new(system::read))
    }

    pub fn read(&self) -> Option<ClockReading> {
        (self.0)()
    }
}

/// A detector fed from a pair of clocks: call [`SleepWatch::check`] every
/// [`CHECK_INTERVAL`].
#[derive(Debug, Clone)]
pub struct SleepWatch {
    clocks: SleepClocks,
    detector: SleepDetector,
}

impl SleepWatch {
    pub fn new(clocks: SleepClocks) -> Self {
        Self {
            clocks,
            detector: SleepDetector::new(),
        }
    }

    /// Watching the system's clocks; `None` where the platform has no pair for it.
    pub fn system() -> Option<Self> {
        SleepClocks::system().map(Self::new)
    }

    /// Reads the clocks; how long the system slept since the last check, if it did. A
    /// failed reading is skipped (the next is compared with the last good one).
    pub fn check(&mut self) -> Option<Duration> {
        self.detector.observe(self.clocks.read()?)
    }
}

#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
mod system {
    use std::time::Duration;

    use super::ClockReading;

    #[cfg(any(target_os = "linux", target_os = "android"))]
    const CLOCKS: (libc::clockid_t, libc::clockid_t) =
        (libc::CLOCK_MONOTONIC, libc::CLOCK_BOOTTIME);
    #[cfg(target_vendor = "apple")]
    const CLOCKS: (libc::clockid_t, libc::clockid_t) =
        (libc::CLOCK_UPTIME_RAW, libc::CLOCK_MONOTONIC);

    /// Both clocks; `None` when either cannot be read.
    pub fn read() -> Option<ClockReading> {
        Some(ClockReading {
            awake: clock(CLOCKS.0)?,
            total: clock(CLOCKS.1)?,
        })
    }

    fn clock(id: libc::clockid_t) -> Option<Duration> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write into; an unknown clock returns -1.
        if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
            return None;
        }
        let secs = u64::try_from(ts.tv_sec).ok()?;
        let nanos = u32::try_from(ts.tv_nsec)
            .ok()
            .filter(|n| *n < 1_000_000_000)?;
        Some(Duration::new(secs, nanos))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
mod system {
    use super::ClockReading;

    /// No pair of clocks to compare here.
    pub fn read() -> Option<ClockReading> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(awake: u64, total: u64) -> ClockReading {
        ClockReading {
            awake: Duration::from_secs(awake),
            total: Duration::from_secs(total),
        }
    }

    #[test]
    fn clocks_moving_together_are_no_sleep() {
        let mut d = SleepDetector::new();
        assert_eq!(d.observe(at(100, 200)), None, "first reading");
        assert_eq!(d.observe(at(105, 205)), None);
        assert_eq!(d.observe(at(110, 212)), None, "2 s of drift is not a sleep");
    }

    #[test]
    fn the_sleep_clock_running_ahead_is_a_sleep_of_the_difference() {
        let mut d = SleepDetector::new();
        d.observe(at(100, 200));
        assert_eq!(d.observe(at(105, 805)), Some(Duration::from_secs(600)));
        assert_eq!(
            d.observe(at(110, 810)),
            None,
            "measured from the last reading"
        );
        assert_eq!(
            d.observe(at(115, 818)),
            Some(Duration::from_secs(3)),
            "3 s is one"
        );
    }

    #[test]
    fn a_clock_going_backwards_is_no_sleep() {
        let mut d = SleepDetector::new();
        d.observe(at(100, 200));
        assert_eq!(d.observe(at(90, 150)), None);
        assert_eq!(
            d.observe(at(95, 155)),
            None,
            "measured from the earlier reading"
        );
    }

    #[test]
    fn a_watch_skips_a_failed_reading() {
        let readings = std::sync::Mutex::new(vec![Some(at(110, 810)), None, Some(at(100, 200))]);
        let mut w = SleepWatch::new(SleepClocks::new(move || {
            readings.lock().ok().and_then(|mut r| r.pop()).flatten()
        }));
        assert_eq!(w.check(), None, "first reading");
        assert_eq!(w.check(), None, "no reading");
        assert_eq!(
            w.check(),
            Some(Duration::from_secs(600)),
            "from the last good one"
        );
    }

    #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
    #[test]
    fn the_real_clocks_show_no_sleep_over_a_short_wait() {
        let mut w = SleepWatch::system().expect("this platform has a pair of clocks");
        assert_eq!(w.check(), None, "first reading");
        std::thread::sleep(Duration::from_millis(20));
        let r = SleepClocks::system()
            .and_then(|c| c.read())
            .expect("clocks");
        assert!(r.awake > Duration::ZERO, "{r:?}");
        assert_eq!(w.check(), None);
    }
}
