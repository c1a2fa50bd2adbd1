//! Liveness of the tailnet websocket, sans-IO.
//!
//! Coder's Go client gets this from hashicorp/yamux's default keep-alive (a ping every 30 s;
//! no answer within 10 s closes the session). The `yamux` crate has no keep-alive, so the
//! client does the same one layer down: after `interval` without receiving anything it sends
//! a websocket ping, and if nothing at all (pong, data, anything) arrives within `timeout`
//! the connection is dead. Coder's server (coder/websocket) answers pings while its yamux
//! session reads, which it always does.

use std::time::{Duration, Instant};

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
}

impl KeepAlive {
    pub fn new(config: KeepAliveConfig, now: Instant) -> Self {
        Self {
            config,
            last_rx: now,
            ping_sent: None,
        }
    }

    /// Something arrived from the peer.
    pub fn on_receive(&mut self, now: Instant) {
        self.last_rx = now;
        self.ping_sent = None;
    }

    /// When to call [`KeepAlive::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Instant {
        match self.ping_sent {
            Some(sent) => sent + self.config.timeout,
            None => self.last_rx + self.config.interval,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> KeepAliveAction {
        if now < self.poll_timeout() {
            return KeepAliveAction::Wait;
        }
        match self.ping_sent {
            Some(sent) => KeepAliveAction::Dead {
                waited: now.saturating_duration_since(sent),
            },
            None => {
                self.ping_sent = Some(now);
                KeepAliveAction::Ping
            }
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
}
