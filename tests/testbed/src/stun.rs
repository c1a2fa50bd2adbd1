//! The testbed's STUN server: one UDP socket on the listen IP that answers Tailscale binding
//! requests (SOFTWARE `tailnode`, valid FINGERPRINT, as `stun.ParseBindingRequest` wants)
//! with a binding success response whose XOR-MAPPED-ADDRESS is the request's source
//! address, as the DERP server's STUN listener does (`derp/derper` `serveSTUN`). Anything
//! else is dropped and counted. Published as a `STUNOnly` node of its region
//! ([`crate::derpmap`]).
//!
//! A delay ([`StunServer::set_delay`], changeable at any time) holds each answer back; the
//! delayed answers are sent from tasks of their own (at most [`MAX_DELAYED`] in flight,
//! requests beyond that are dropped and counted), so one slow answer holds up no other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use codervpn_engine::net::stun::{binding_response, parse_binding_request};
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, trace, warn};

/// What the server did with one datagram.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A binding request: send these bytes back to its source.
    Answer(Vec<u8>),
    /// Not a Tailscale binding request: no answer.
    Drop,
}

/// The reply to `packet` from `src` (sans-IO core of the server).
pub(crate) fn answer(packet: &[u8], src: SocketAddr) -> Verdict {
    match parse_binding_request(packet) {
        Ok(tx_id) => Verdict::Answer(binding_response(tx_id, unmap(src))),
        Err(e) => {
            trace!(%src, error = %e, "STUN: dropped");
            Verdict::Drop
        }
    }
}

/// Requests answered and datagrams dropped so far.
#[derive(Debug, Default)]
pub(crate) struct StunCounts {
    pub(crate) answered: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// Delayed answers in flight at most; requests beyond that are dropped.
pub(crate) const MAX_DELAYED: usize = 1024;

/// A running STUN server; dropping it stops it (delayed answers not yet sent included).
pub(crate) struct StunServer {
    addr: SocketAddr,
    counts: Arc<StunCounts>,
    delay: watch::Sender<Duration>,
    stop: Option<oneshot::Sender<()>>,
}

impl StunServer {
    /// Binds `ip:0` and serves on the current runtime.
    pub(crate) async fn start(ip: std::net::IpAddr) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let addr = socket.local_addr()?;
        let counts = Arc::new(StunCounts::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let (delay_tx, delay_rx) = watch::channel(Duration::ZERO);
        tokio::spawn(serve(Arc::new(socket), counts.clone(), delay_rx, stop_rx));
        debug!(%addr, "STUN server listening");
        Ok(Self {
            addr,
            counts,
            delay: delay_tx,
            stop: Some(stop_tx),
        })
    }

    /// Answers each binding request received from now on only after `delay` (zero: at once).
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.delay.send_replace(delay);
    }

    pub(crate) fn delay(&self) -> Duration {
        *self.delay.borrow()
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn counts(&self) -> &StunCounts {
        &self.counts
    }
}

impl Drop for StunServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(
    socket: Arc<UdpSocket>,
    counts: Arc<StunCounts>,
    delay: watch::Receiver<Duration>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 2048];
    // Dropped (so aborted) when the server stops.
    let mut delayed = JoinSet::new();
    loop {
        while delayed.try_join_next().is_some() {}
        let (n, src) = tokio::select! {
            _ = &mut stop => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(got) => got,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some kernels; keep going.
                    debug!(error = %e, "STUN: receive failed");
                    continue;
                }
            },
        };
        let wait = *delay.borrow();
        match answer(&buf[..n], src) {
            Verdict::Answer(reply) if wait.is_zero() => {
                counts.answered.fetch_add(1, Ordering::Relaxed);
                send(&socket, &reply, src).await;
            }
            Verdict::Answer(_) if delayed.len() >= MAX_DELAYED => {
                debug!(%src, "STUN: too many delayed answers in flight; dropped");
                counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Answer(reply) => {
                counts.answered.fetch_add(1, Ordering::Relaxed);
                let socket = socket.clone();
                delayed.spawn(async move {
                    tokio::time::sleep(wait).await;
                    send(&socket, &reply, src).await;
                });
            }
            Verdict::Drop => {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn send(socket: &UdpSocket, reply: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(reply, to).await {
        warn!(%to, error = %e, "STUN: cannot answer");
    }
}

/// An IPv4 source seen on a dual-stack socket as `::ffff:a.b.c.d` is reported as IPv4.
fn unmap(src: SocketAddr) -> SocketAddr {
    match src {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => src,
        },
        SocketAddr::V4(_) => src,
    }
}

#[cfg(test)]
mod tests {
    use codervpn_engine::net::stun::{binding_request, parse_response};

    use super::*;

    fn src() -> SocketAddr {
        "198.51.100.7:41641".parse().unwrap()
    }

    #[test]
    fn binding_request_is_answered_with_its_source_as_xor_mapped_address() {
        let tx = [7u8; 12];
        let Verdict::Answer(reply) = answer(&binding_request(tx), src()) else {
            panic!("no answer");
        };
        assert_eq!(parse_response(&reply), Ok((tx, src())));
    }

    #[test]
    fn ipv6_source_is_reported_as_ipv6() {
        let from: SocketAddr = "[2001:db8::5]:3478".parse().unwrap();
        let Verdict::Answer(reply) = answer(&binding_request([1; 12]), from) else {
            panic!("no answer");
        };
        assert_eq!(parse_response(&reply).map(|(_, a)| a), Ok(from));
    }

    #[test]
    fn ipv4_mapped_source_is_reported_as_ipv4() {
        let from: SocketAddr = "[::ffff:198.51.100.7]:41641".parse().unwrap();
        let Verdict::Answer(reply) = answer(&binding_request([2; 12]), from) else {
            panic!("no answer");
        };
        assert_eq!(parse_response(&reply).map(|(_, a)| a), Ok(src()));
    }

    #[test]
    fn garbage_is_dropped() {
        assert_eq!(answer(b"hello", src()), Verdict::Drop);
        assert_eq!(answer(&[0u8; 64], src()), Verdict::Drop);
    }

    #[test]
    fn request_with_a_broken_fingerprint_is_dropped() {
        let mut req = binding_request([3; 12]);
        let last = req.len() - 1;
        req[last] ^= 1;
        assert_eq!(answer(&req, src()), Verdict::Drop);
    }

    #[test]
    fn plain_rfc5389_request_without_tailnode_software_is_dropped() {
        // A bare 20-byte binding request (what most STUN clients send).
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        req.extend_from_slice(&[9; 12]);
        assert_eq!(answer(&req, src()), Verdict::Drop);
    }
}
