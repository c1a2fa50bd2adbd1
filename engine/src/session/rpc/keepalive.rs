//! Liveness of the tailnet websocket, sans-IO.
//!
//! Coder's Go client gets this from hashicorp/yamux's default keep-alive (a ping every 30 s;
//! no answer within 10 s closes the session). The `yamux` crate has no keep-alive, so the
//! client does the same one layer down: after `interval` without receiving anything it sends
//! a websocket ping, and if nothing at all (pong, data, anything) arrives within `timeout`
//! the connection is dead. Coder's server (coder/websocket) answers pings while its yamux
//! session reads, which it always does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Context;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

/// hashicorp/yamux `DefaultConfig`: `KeepAliveInterval` 30 s, `ConnectionWriteTimeout` 10 s
/// (how long `Ping` waits for its answer).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAliveConfig {
    /// Quiet time before a ping.
    pub interval: Duration,
    /// How long a ping may go unanswered.
    pub timeout: Duration,
}

impl Default for KeepAliveConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What to do at a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveAction {
    /// Not due yet.
    Wait,
    /// Send a ping now.
    Ping,
    /// A ping went unanswered: close the connection.
    Dead { waited: Duration },
}

/// The keep-alive state of one connection.
#[derive(Debug, Clone)]
pub struct KeepAlive {
    config: KeepAliveConfig,
    last_rx: Instant,
    ping_sent: Option<Instant>,
    /// When the ping in flight must have been answered.
    deadline: Option<Instant>,
    /// A probe asked for: ping now, answered within this.
    probe: Option<Duration>,
}

impl KeepAlive {
    pub fn new(config: KeepAliveConfig, now: Instant) -> Self {
        Self {
            config,
            last_rx: now,
            ping_sent: None,
            deadline: None,
            probe: None,
        }
    }

    /// Something arrived from the peer.
    pub fn on_receive(&mut self, now: Instant) {
        self.last_rx = now;
        self.ping_sent = None;
        self.deadline = None;
        self.probe = None;
    }

    /// Asks for proof of life (after a wake): a ping at once that must be answered within
    /// `timeout`, whatever the interval says.
    pub fn probe(&mut self, timeout: Duration) {
        self.probe = Some(timeout);
    }

    /// When to call [`KeepAlive::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Instant {
        if self.probe.is_some() {
            return self.last_rx;
        }
        match self.deadline {
            Some(d) => d,
            None => self.last_rx + self.config.interval,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> KeepAliveAction {
        if let Some(timeout) = self.probe.take() {
            let d = now + timeout;
            match self.deadline {
                Some(old) => self.deadline = Some(old.min(d)),
                None => {
                    self.ping_sent = Some(now);
                    self.deadline = Some(d);
                    return KeepAliveAction::Ping;
                }
            }
        }
        if now < self.poll_timeout() {
            return KeepAliveAction::Wait;
        }
        match self.ping_sent {
            Some(sent) => KeepAliveAction::Dead {
                waited: now.saturating_duration_since(sent),
            },
            None => {
                self.ping_sent = Some(now);
                self.deadline = Some(now + self.config.timeout);
                KeepAliveAction::Ping
            }
        }
    }
}

/// Asks whichever tailnet websocket is open now to prove it is alive (a wake after a
/// suspend: the connection may look open and carry nothing). Cheap to clone; every
/// websocket dialled with it listens.
#[derive(Clone, Debug, Default)]
pub struct ProbeHandle(Arc<ProbeShared>);

#[derive(Debug, Default)]
struct ProbeShared {
    timeout_ms: AtomicU64,
    waker: AtomicWaker,
}

impl ProbeHandle {
    /// A ping now, to be answered within `timeout` or the connection is dropped (and the
    /// controller redials).
    pub fn probe(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.0.timeout_ms.store(ms, Ordering::Relaxed);
        self.0.waker.wake();
    }

    /// A probe asked for since the last call; registers `cx` to be woken by the next.
    pub(crate) fn take(&self, cx: &Context<'_>) -> Option<Duration> {
        self.0.waker.register(cx.waker());
        match self.0.timeout_ms.swap(0, Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn quiet_connection_is_pinged_after_the_interval() {
        let t0 = Instant::now();
        let mut k = KeepAlive::new(KeepAliveConfig::default(), t0);
        assert_eq!(k.poll_timeout(), t0 + 30 * S);
        assert_eq!(k.handle_timeout(t0 + 29 * S), KeepAliveAction::Wait);
        assert_eq!(k.handle_timeout(t0 + 30 * S), KeepAliveAction::Ping);
        assert_eq!(k.poll_timeout(), t0 + 40 * S);
    }

    #[test]
    fn unanswered_ping_is_dead_after_the_timeout() {
        let t0 = Instant::now();
        let mut k = KeepAlive::new(KeepAliveConfig::default(), t0);
        k.handle_timeout(t0 + 30 * S);
        assert_eq!(k.handle_timeout(t0 + 39 * S), KeepAliveAction::Wait);
        assert_eq!(
            k.handle_timeout(t0 + 40 * S),
            KeepAliveAction::Dead { waited: 10 * S }
        );
    }

    #[test]
    fn anything_received_answers_the_ping_and_restarts_the_interval() {
        let t0 = Instant::now();
        let mut k = KeepAlive::new(KeepAliveConfig::default(), t0);
        k.handle_timeout(t0 + 30 * S);
        k.on_receive(t0 + 35 * S);
        assert_eq!(k.poll_timeout(), t0 + 65 * S);
        assert_eq!(k.handle_timeout(t0 + 40 * S), KeepAliveAction::Wait);
    }

    #[test]
    fn traffic_postpones_the_ping() {
        let t0 = Instant::now();
        let mut k = KeepAlive::new(KeepAliveConfig::default(), t0);
        k.on_receive(t0 + 20 * S);
        assert_eq!(k.handle_timeout(t0 + 30 * S), KeepAliveAction::Wait);
        assert_eq!(k.handle_timeout(t0 + 50 * S), KeepAliveAction::Ping);
    }

    #[test]
    fn a_probe_pings_at_once_with_its_own_deadline() {
        let t0 = Instant::now();
        let mut k = KeepAlive::new(KeepAliveConfig::default(), t0);
        assert_eq!(k.handle_timeout(t0 + S), KeepAliveAction::Wait);
        k.probe(3 * S);
        assert!(k.poll_timeout() <= t0 + S, "due at once");
        assert_eq!(k.handle_timeout(t0 + S), KeepAliveAction::Ping);
        assert_eq!(k.poll_timeout(), t0 + 4 * S, "3 s, not the usual 10");
        assert_eq!(k.handle_timeout(t0 + 3 * S), KeepAliveAction::Wait);
        assert_eq!(
            k.handle_timeout(t0 + 4 * S),
            KeepAliveAction::Dead { waited: 3 * S }
        );
        // Answered in time: alive, back to the 30 s rhythm.
        let mut k = KeepAlive::new(KeepAliveConfig::default(), t0);
        k.probe(3 * S);
        assert_eq!(k.handle_timeout(t0), KeepAliveAction::Ping);
        k.on_receive(t0 + S);
        assert_eq!(k.poll_timeout(), t0 + 31 * S);
        // A probe while a ping is in flight only brings its deadline closer.
        let mut k = KeepAlive::new(KeepAliveConfig::default(), t0);
        assert_eq!(k.handle_timeout(t0 + 30 * S), KeepAliveAction::Ping);
        k.probe(2 * S);
        assert_eq!(k.handle_timeout(t0 + 31 * S), KeepAliveAction::Wait);
        assert_eq!(k.poll_timeout(), t0 + 33 * S);
    }
}
