//! The stack task: the one owner of the smoltcp `Interface`, its `SocketSet` and every
//! connection, outbound or accepted. It is a hand-written poll loop so that one `Context`
//! serves every waker: packets from the runner, connect and listen requests, the local ends
//! of the connections' pipes, room in the queue to the runner, and smoltcp's own timers.

mod listen;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use smoltcp::iface::{Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tracing::{debug, trace};

use super::phy::Phy;
use super::{ConnectError, ListenError, UserspaceConfig};
use listen::Listener;

/// Packets taken from the runner per pass before the sockets get a turn.
const INGRESS_BATCH: usize = 64;
/// Passes without waiting before the task yields to others.
const PASS_BUDGET: usize = 32;
/// Capacity of the in-memory pipe between a connection and its user, each way.
pub(super) const PIPE_BUF: usize = 64 * 1024;
/// First local port of the ephemeral range (RFC 6335).
const EPHEMERAL_FIRST: u16 = 49_152;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// An established connection whose peer answers nothing (not even keep-alives) this long
/// is aborted.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Far enough in the future to mean "no timer".
const NEVER: Duration = Duration::from_secs(86_400);

/// An accepted connection: the user's end of its pipe and the peer's address.
pub(super) type Accepted = (DuplexStream, SocketAddr);

/// A request to the stack task.
pub(super) enum Command {
    Connect {
        to: SocketAddr,
        reply: oneshot::Sender<Result<DuplexStream, ConnectError>>,
    },
    Listen {
        port: u16,
        reply: oneshot::Sender<Result<mpsc::Receiver<Accepted>, ListenError>>,
    },
    /// A listener was dropped: stop listening on its port (if it is still the one gone).
    Unlisten { port: u16 },
}

type Reserve = Pin<
    Box<dyn Future<Output = Result<mpsc::OwnedPermit<Vec<u8>>, mpsc::error::SendError<()>>> + Send>,
>;

pub(super) struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    phy: Phy,
    conns: Vec<Conn>,
    /// One per listened port, each with its listening sockets.
    listeners: Vec<Listener>,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    cfg: UserspaceConfig,
    epoch: Instant,
    next_port: u16,
    timer: Pin<Box<Sleep>>,
    /// Waits for room in the queue to the runner after smoltcp found it full.
    room: Option<Reserve>,
}

struct Conn {
    handle: SocketHandle,
    /// The far end: where we connected to, or who connected to us.
    remote: SocketAddr,
    local_port: u16,
    /// The stack's end of the pipe; the user holds the other.
    pipe: DuplexStream,
    phase: Phase,
}

enum Phase {
    /// SYN sent or received; the user's end goes to `waiter` once the handshake is done.
    Handshake {
        waiter: Waiter,
        user_end: DuplexStream,
        deadline: Instant,
    },
    Open {
        /// The user closed its sending half: our FIN is queued.
        user_eof: bool,
        /// The peer's FIN reached the user as end-of-stream.
        peer_eof: bool,
    },
}

/// Who gets a connection once its handshake is done.
enum Waiter {
    /// The caller of `connect`.
    Connect(oneshot::Sender<Result<DuplexStream, ConnectError>>),
    /// The listener that accepted the SYN.
    Listener(mpsc::Sender<Accepted>),
}

impl Waiter {
    fn is_gone(&self) -> bool {
        match self {
            Waiter::Connect(reply) => reply.is_closed(),
            Waiter::Listener(accepted) => accepted.is_closed(),
        }
    }
}

/// What servicing one connection did.
struct Step {
    progress: bool,
    done: bool,
}

impl Step {
    /// Nothing happened.
    const IDLE: Step = Step {
        progress: false,
        done: false,
    };
    /// The connection is finished: drop it.
    const DONE: Step = Step {
        progress: true,
        done: true,
    };
}

impl Stack {
    pub(super) fn new(
        iface: Interface,
        phy: Phy,
        commands: mpsc::Receiver<Command>,
        cfg: UserspaceConfig,
        epoch: Instant,
        seed: u64,
    ) -> Self {
        let span = 65_535 - EPHEMERAL_FIRST;
        Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            phy,
            conns: Vec::new(),
            listeners: Vec::new(),
            commands,
            commands_open: true,
            cfg,
            epoch,
            next_port: EPHEMERAL_FIRST + (seed % u64::from(span)) as u16,
            timer: Box::pin(tokio::time::sleep(NEVER)),
            room: None,
        }
    }

    /// Runs until the device (the runner's end of the packet queues) is dropped.
    pub(super) async fn run(mut self) {
        std::future::poll_fn(|cx| self.poll_run(cx)).await;
        debug!(connections = self.conns.len(), "userspace stack stopped");
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..PASS_BUDGET {
            while self.commands_open {
                match self.commands.poll_recv(cx) {
                    Poll::Ready(Some(Command::Connect { to, reply })) => self.connect(to, reply),
                    Poll::Ready(Some(Command::Listen { port, reply })) => {
                        let _ = reply.send(self.listen(port));
                    }
                    Poll::Ready(Some(Command::Unlisten { port })) => self.unlisten(port),
                    Poll::Ready(None) => self.commands_open = false,
                    Poll::Pending => break,
                }
            }
            if self.phy.pending.is_none() {
                match self.phy.from_tunnel.poll_recv(cx) {
                    Poll::Ready(Some(packet)) => self.phy.pending = Some(packet),
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            if let Some(room) = self.room.as_mut() {
                match room.as_mut().poll(cx) {
                    Poll::Ready(Ok(_permit)) => self.room = None, // dropping the permit frees the slot
                    Poll::Ready(Err(_closed)) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            let blocked_before = self.phy.blocked;
            if self.room.is_none() {
                self.phy.blocked = false;
            }
            let mut busy = self.poll_iface();
            busy |= self.service_listeners();
            busy |= self.service_conns(cx);
            if busy {
                // Sockets changed: let smoltcp send what they queued before waiting.
                self.poll_iface();
            }
            if self.phy.blocked && self.room.is_none() {
                if !blocked_before {
                    trace!("queue to the runner is full; waiting for room");
                }
                self.room = Some(Box::pin(self.phy.to_tunnel.clone().reserve_owned()));
                continue;
            }
            // More packets from the runner: take them now, unless there is no room for
            // what they would make smoltcp send (then room in the queue wakes us).
            if busy || (self.phy.has_input() && !self.phy.blocked) {
                continue;
            }
            self.arm_timer();
            match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn smol_now(&self) -> smoltcp::time::Instant {
        let since = Instant::now().saturating_duration_since(self.epoch);
        smoltcp::time::Instant::from_micros(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }

    /// Feeds up to a batch of packets to smoltcp and lets it send. True if a socket may have
    /// changed.
    fn poll_iface(&mut self) -> bool {
        let now = self.smol_now();
        self.iface.poll_maintenance(now);
        let mut changed = false;
        for _ in 0..INGRESS_BATCH {
            match self
                .iface
                .poll_ingress_single(now, &mut self.phy, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => changed = true,
            }
            // A SYN takes a listening socket: listen again at once, before the next
            // packet (perhaps another SYN) finds none and is reset.
            self.rearm_listeners();
        }
        loop {
            match self
                .iface
                .poll_egress(now, &mut self.phy, &mut self.sockets)
            {
                PollResult::None => break,
                PollResult::SocketStateChanged => changed = true,
            }
        }
        changed
    }

    /// Sets the timer to smoltcp's next deadline or the first connect deadline.
    fn arm_timer(&mut self) {
        let now = Instant::now();
        let mut at = now + NEVER;
        // While the queue to the runner is full, smoltcp's "send now" is not ours to honour:
        // room in the queue wakes the task instead.
        if !self.phy.blocked {
            let smol_now = self.smol_now();
            if let Some(delay) = self.iface.poll_delay(smol_now, &self.sockets) {
                at = at.min(now + Duration::from_micros(delay.total_micros()));
            }
        }
        for conn in &self.conns {
            if let Phase::Handshake { deadline, .. } = conn.phase {
                at = at.min(deadline);
            }
        }
        if self.timer.deadline() != at {
            self.timer.as_mut().reset(at);
        }
    }

    fn connect(
        &mut self,
        to: SocketAddr,
        reply: oneshot::Sender<Result<DuplexStream, ConnectError>>,
    ) {
        match self.start_connect(to) {
            Ok((handle, local_port)) => {
                debug!(%to, local_port, "connecting through the tunnel");
                let (user_end, pipe) = tokio::io::duplex(PIPE_BUF);
                let deadline = Instant::now() + self.cfg.connect_timeout;
                self.conns.push(Conn {
                    handle,
                    remote: to,
                    local_port,
                    pipe,
                    phase: Phase::Handshake {
                        waiter: Waiter::Connect(reply),
                        user_end,
                        deadline,
                    },
                });
            }
            Err(e) => {
                debug!(%to, error = %e, "not connecting");
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Opens a smoltcp socket towards `to`: its handle and local port.
    fn start_connect(&mut self, to: SocketAddr) -> Result<(SocketHandle, u16), ConnectError> {
        if self.slots_used() >= self.cfg.max_connections {
            return Err(ConnectError::TooManyConnections {
                max: self.cfg.max_connections,
            });
        }
        if to.port() == 0 || to.ip().is_unspecified() || to.ip().is_multicast() {
            return Err(ConnectError::Unreachable {
                to,
                why: "not a unicast address and port",
            });
        }
        let family_ok = self.iface.ip_addrs().iter().any(|cidr| {
            matches!(
                (cidr.address(), to.ip()),
                (smoltcp::wire::IpAddress::Ipv4(_), IpAddr::V4(_))
                    | (smoltcp::wire::IpAddress::Ipv6(_), IpAddr::V6(_))
            )
        });
        if !family_ok {
            return Err(ConnectError::Unreachable {
                to,
                why: if to.is_ipv4() {
                    "the tunnel has no IPv4 address"
                } else {
                    "the tunnel has no IPv6 address"
                },
            });
        }
        if !self.cfg.reachable.is_empty()
            && !self.cfg.reachable.iter().any(|net| net.contains(&to.ip()))
        {
            return Err(ConnectError::Unreachable {
                to,
                why: "no peer's allowed IPs cover it",
            });
        }
        let local_port = self.free_port(to).ok_or(ConnectError::TooManyConnections {
            max: self.cfg.max_connections,
        })?;
        let mut socket = self.new_socket();
        socket
            .connect(self.iface.context(), to, local_port)
            .map_err(|e| ConnectError::Unreachable {
                to,
                why: connect_error_text(e),
            })?;
        Ok((self.sockets.add(socket), local_port))
    }

    /// A TCP socket with the configured buffers, Nagle off.
    fn new_socket(&self) -> tcp::Socket<'static> {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; self.cfg.socket_buffer]),
            tcp::SocketBuffer::new(vec![0u8; self.cfg.socket_buffer]),
        );
        socket.set_nagle_enabled(false);
        socket
    }

    /// Sockets held, each with its buffers: connections and listening sockets. Bounded by
    /// `max_connections`.
    fn slots_used(&self) -> usize {
        self.conns.len() + self.listeners.iter().map(Listener::waiting).sum::<usize>()
    }

    /// The next ephemeral port no connection to `to` uses and nothing listens on.
    fn free_port(&mut self, to: SocketAddr) -> Option<u16> {
        for _ in EPHEMERAL_FIRST..=65_535 {
            let port = self.next_port;
            self.next_port = if port == 65_535 {
                EPHEMERAL_FIRST
            } else {
                port + 1
            };
            if !self
                .conns
                .iter()
                .any(|c| c.local_port == port && c.remote == to)
                && !self.listeners.iter().any(|l| l.port() == port)
            {
                return Some(port);
            }
        }
        None
    }

    /// Moves bytes between every socket and its pipe; drops finished connections. True if
    /// anything moved or changed.
    fn service_conns(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.conns.len() {
            let conn = &mut self.conns[i];
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            let step = service(conn, socket, cx);
            progress |= step.progress;
            if step.done {
                let conn = self.conns.swap_remove(i);
                self.sockets.remove(conn.handle);
                progress = true;
            } else {
                i += 1;
            }
        }
        progress
    }
}

fn connect_error_text(e: tcp::ConnectError) -> &'static str {
    match e {
        tcp::ConnectError::InvalidState => "the socket was already open",
        tcp::ConnectError::Unaddressable => "no source address for it",
    }
}

fn service(conn: &mut Conn, socket: &mut tcp::Socket<'static>, cx: &mut Context<'_>) -> Step {
    let Phase::Handshake {
        waiter, deadline, ..
    } = &conn.phase
    else {
        return service_open(conn, socket, cx);
    };
    if waiter.is_gone() {
        debug!(remote = %conn.remote, "handshake abandoned: nobody waits for the connection");
        socket.abort();
        return Step::DONE;
    }
    match socket.state() {
        tcp::State::SynSent | tcp::State::SynReceived => {
            if Instant::now() < *deadline {
                return Step::IDLE;
            }
            socket.abort();
            finish_handshake(conn, Err(ConnectError::TimedOut { to: conn.remote }));
            return Step::DONE;
        }
        // Reset by the peer (a listening socket goes back to `Listen` then).
        tcp::State::Closed | tcp::State::Listen | tcp::State::TimeWait => {
            finish_handshake(conn, Err(ConnectError::Refused { to: conn.remote }));
            return Step::DONE;
        }
        tcp::State::Established
        | tcp::State::FinWait1
        | tcp::State::FinWait2
        | tcp::State::CloseWait
        | tcp::State::Closing
        | tcp::State::LastAck => {}
    }
    socket.set_keep_alive(Some(KEEP_ALIVE.into()));
    socket.set_timeout(Some(IDLE_TIMEOUT.into()));
    if !finish_handshake(conn, Ok(())) {
        debug!(remote = %conn.remote, "connected, but nobody takes the connection");
        socket.abort();
        return Step::DONE;
    }
    debug!(remote = %conn.remote, local_port = conn.local_port, "connected through the tunnel");
    let mut step = service_open(conn, socket, cx);
    step.progress = true;
    step
}

/// Hands the connection to its waiter (or tells a connect request why not); on success the
/// connection becomes `Open`. False if the waiter did not take it.
fn finish_handshake(conn: &mut Conn, result: Result<(), ConnectError>) -> bool {
    let phase = std::mem::replace(
        &mut conn.phase,
        Phase::Open {
            user_eof: false,
            peer_eof: false,
        },
    );
    let Phase::Handshake {
        waiter, user_end, ..
    } = phase
    else {
        return true;
    };
    match (waiter, result) {
        (Waiter::Connect(reply), Ok(())) => reply.send(Ok(user_end)).is_ok(),
        (Waiter::Listener(accepted), Ok(())) => {
            // Full only if the user lets `max_connections` accepted connections pile up.
            accepted.try_send((user_end, conn.remote)).is_ok()
        }
        (Waiter::Connect(reply), Err(e)) => {
            debug!(remote = %conn.remote, error = %e, "connect failed");
            let _ = reply.send(Err(e));
            true
        }
        (Waiter::Listener(_), Err(e)) => {
            debug!(remote = %conn.remote, error = %e, "incoming connection failed");
            true
        }
    }
}

fn service_open(conn: &mut Conn, socket: &mut tcp::Socket<'static>, cx: &mut Context<'_>) -> Step {
    let Phase::Open { user_eof, peer_eof } = &mut conn.phase else {
        return Step::IDLE;
    };
    let mut progress = false;
    let pipe = &mut conn.pipe;

    // Peer → user, only as fast as the user reads (the pipe is bounded; what it cannot take
    // stays in smoltcp's receive buffer and closes the TCP window).
    while socket.can_recv() && !*peer_eof {
        let moved = socket.recv(|data| match Pin::new(&mut *pipe).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => (n, Ok(n)),
            Poll::Ready(Err(e)) => (0, Err(e)),
            Poll::Pending => (0, Ok(0)),
        });
        match moved {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                trace!(remote = %conn.remote, n, "tunnel → user");
                progress = true;
            }
            Ok(Err(_gone)) => {
                debug!(remote = %conn.remote, "user closed the connection; resetting it");
                socket.abort();
                return Step::DONE;
            }
        }
    }
    if !*peer_eof && !socket.can_recv() && peer_finished(socket.state()) {
        // The peer's FIN (or reset): end-of-stream for the user.
        let _ = Pin::new(&mut *pipe).poll_shutdown(cx);
        *peer_eof = true;
        progress = true;
    }

    // User → peer, only as much as smoltcp's send buffer takes.
    while !*user_eof && socket.can_send() {
        let moved = socket.send(|buf| {
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut *pipe).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    (n, Some(n))
                }
                Poll::Ready(Err(_)) => (0, Some(0)),
                Poll::Pending => (0, None),
            }
        });
        match moved {
            Ok(Some(0)) => {
                debug!(remote = %conn.remote, "user finished sending; closing our half");
                socket.close();
                *user_eof = true;
                progress = true;
            }
            Ok(Some(n)) => {
                trace!(remote = %conn.remote, n, "user → tunnel");
                progress = true;
            }
            Ok(None) | Err(_) => break,
        }
    }

    // The user dropped its end while the peer still holds the connection open: nobody will
    // read what the peer sends, so reset.
    if *user_eof && !*peer_eof && user_gone(pipe, cx) {
        debug!(remote = %conn.remote, "user went away; resetting the connection");
        socket.abort();
        return Step::DONE;
    }

    let state = socket.state();
    let done = match state {
        tcp::State::Closed | tcp::State::TimeWait => *peer_eof || !socket.can_recv(),
        tcp::State::Listen
        | tcp::State::SynSent
        | tcp::State::SynReceived
        | tcp::State::Established
        | tcp::State::FinWait1
        | tcp::State::FinWait2
        | tcp::State::CloseWait
        | tcp::State::Closing
        | tcp::State::LastAck => false,
    };
    if done {
        debug!(remote = %conn.remote, %state, "connection finished");
        if !*peer_eof {
            let _ = Pin::new(&mut *pipe).poll_shutdown(cx);
        }
    }
    Step { progress, done }
}

/// Whether the peer has closed its sending half (FIN received, or the connection is gone).
fn peer_finished(state: tcp::State) -> bool {
    match state {
        tcp::State::CloseWait
        | tcp::State::LastAck
        | tcp::State::Closing
        | tcp::State::TimeWait
        | tcp::State::Closed => true,
        tcp::State::Listen
        | tcp::State::SynSent
        | tcp::State::SynReceived
        | tcp::State::Established
        | tcp::State::FinWait1
        | tcp::State::FinWait2 => false,
    }
}

/// Whether the user's end of the pipe has been dropped: writing nothing fails only then.
fn user_gone(pipe: &mut DuplexStream, cx: &mut Context<'_>) -> bool {
    matches!(Pin::new(pipe).poll_write(cx, &[]), Poll::Ready(Err(ref e)) if e.kind() == io::ErrorKind::BrokenPipe)
}
