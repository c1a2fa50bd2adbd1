//! At most one wake-triggered rebind per [`REBIND_DEBOUNCE`] (tests may shorten it through
//! `OwnerTimings::rebind_debounce`), as upstream's tunnel does
//! (coder/coder `vpn/tunnel.go` `wakeRebindDebounce`, v2.36.1): a rebind resets the trust in
//! every peer's path, so the duplicate wakes an OS delivers must not each cause one. The
//! wake itself is still answered.

use std::time::{Duration, Instant};

/// The least time between two wake-triggered rebinds.
pub const REBIND_DEBOUNCE: Duration = Duration::from_secs(5);

/// When the last rebind ran.
#[derive(Debug, Default)]
pub struct RebindGate {
    last: Option<Instant>,
}

impl RebindGate {
    /// Whether a wake at `now` may rebind, `debounce` after the last one; if so, `now`
    /// becomes the last rebind.
    pub fn allow(&mut self, now: Instant, debounce: Duration) -> bool {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < debounce)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_wake_rebinds_and_wakes_within_five_seconds_do_not() {
        let t0 = Instant::now();
        let mut g = RebindGate::default();
        let d = REBIND_DEBOUNCE;
        assert!(g.allow(t0, d));
        assert!(!g.allow(t0, d));
        assert!(!g.allow(t0 + Duration::from_millis(4999), d));
        assert!(g.allow(t0 + d, d));
        // Measured from the last rebind that ran, not from the last wake.
        assert!(!g.allow(t0 + Duration::from_secs(9), d));
        assert!(g.allow(t0 + Duration::from_secs(10), d));
    }

    #[test]
    fn a_zero_debounce_lets_every_wake_rebind() {
        let t0 = Instant::now();
        let mut g = RebindGate::default();
        assert!(g.allow(t0, Duration::ZERO));
        assert!(g.allow(t0, Duration::ZERO));
    }
}
