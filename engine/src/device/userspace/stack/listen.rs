//! Inbound TCP. smoltcp has no accept queue: a socket in `Listen` takes one SYN and becomes
//! that connection. So each listened port keeps a few listening sockets; one that takes a
//! SYN joins the stack's connections (in `Phase::Handshake`, like an outbound connect) and a
//! fresh socket listens in its place before the next packet is read.

use smoltcp::socket::tcp;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Accepted, Conn, PIPE_BUF, Phase, Stack, Waiter};
use crate::device::userspace::ListenError;
use smoltcp::iface::SocketHandle;
use tokio::time::Instant;

/// Listening sockets kept per port. One would do, since a taken one is replaced before the
/// next packet; the second is slack.
const LISTEN_BACKLOG: usize = 2;

/// A listened port.
pub(super) struct Listener {
    port: u16,
    /// To the user's `StackListener`; bounded by `max_connections` (each queued stream holds
    /// a connection).
    accepted: mpsc::Sender<Accepted>,
    /// Sockets in `Listen`, waiting for a SYN.
    waiting: Vec<SocketHandle>,
}

impl Listener {
    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Listening sockets held (each holds its buffers, so each takes a connection slot).
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

impl Stack {
    /// Starts listening on `port`: the receiving end of its accept queue.
    pub(super) fn listen(&mut self, port: u16) -> Result<mpsc::Receiver<Accepted>, ListenError> {
        if port == 0 {
            return Err(ListenError::PortZero);
        }
        // A listener dropped just now may not have been told to us yet.
        self.drop_closed_listeners();
        if self.listeners.iter().any(|l| l.port == port) {
            return Err(ListenError::PortInUse { port });
        }
        let (accepted, queue) = mpsc::channel(self.cfg.max_connections.max(1));
        self.listeners.push(Listener {
            port,
            accepted,
            waiting: Vec::new(),
        });
        self.rearm_listeners();
        debug!(port, "listening through the tunnel");
        Ok(queue)
    }

    /// A `StackListener` was dropped: stop listening on its port.
    pub(super) fn unlisten(&mut self, port: u16) {
        if !self.drop_closed_listeners() {
            debug!(port, "listener dropped, but its port was already closed");
        }
    }

    /// Drops the listeners whose user is gone, and moves taken listening sockets to the
    /// connections. True if anything changed.
    pub(super) fn service_listeners(&mut self) -> bool {
        let dropped = self.drop_closed_listeners();
        self.rearm_listeners() || dropped
    }

    fn drop_closed_listeners(&mut self) -> bool {
        let sockets = &mut self.sockets;
        let before = self.listeners.len();
        self.listeners.retain(|l| {
            if !l.accepted.is_closed() {
                return true;
            }
            for handle in &l.waiting {
                sockets.remove(*handle);
            }
            debug!(port = l.port, "stopped listening: the listener was dropped");
            false
        });
        self.listeners.len() != before
    }

    /// Moves each listening socket that took a SYN to the connections, then tops every port
    /// up to [`LISTEN_BACKLOG`] listening sockets while connection slots are free. True if
    /// anything changed.
    pub(super) fn rearm_listeners(&mut self) -> bool {
        let mut changed = false;
        let Stack {
            listeners,
            sockets,
            conns,
            cfg,
            ..
        } = self;
        for listener in listeners.iter_mut() {
            let mut i = 0;
            while i < listener.waiting.len() {
                let handle = listener.waiting[i];
                let socket = sockets.get_mut::<tcp::Socket>(handle);
                if socket.state() == tcp::State::Listen {
                    i += 1;
                    continue;
                }
                listener.waiting.swap_remove(i);
                changed = true;
                let Some(remote) = socket.remote_endpoint() else {
                    sockets.remove(handle);
                    continue;
                };
                debug!(port = listener.port, %remote, "incoming connection");
                let (user_end, pipe) = tokio::io::duplex(PIPE_BUF);
                conns.push(Conn {
                    handle,
                    remote: remote.into(),
                    local_port: listener.port,
                    pipe,
                    phase: Phase::Handshake {
                        waiter: Waiter::Listener(listener.accepted.clone()),
                        user_end,
                        deadline: Instant::now() + cfg.connect_timeout,
                    },
                });
            }
        }
        for i in 0..self.listeners.len() {
            while self.listeners[i].waiting.len() < LISTEN_BACKLOG
                && self.slots_used() < self.cfg.max_connections
            {
                let port = self.listeners[i].port;
                let mut socket = self.new_socket();
                if let Err(e) = socket.listen(port) {
                    // Only port 0 or a socket already open fails, and neither is this one.
                    warn!(port, error = %e, "cannot listen");
                    break;
                }
                let handle = self.sockets.add(socket);
                self.listeners[i].waiting.push(handle);
                changed = true;
            }
        }
        changed
    }
}
