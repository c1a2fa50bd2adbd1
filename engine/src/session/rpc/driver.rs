//! The tokio shell around one [`Call`]: a task that owns the transport stream (a yamux
//! stream), feeds it to the call, writes what the call queues, and talks to the user of the
//! call through two bounded channels.
//!
//! Reading, writing, commands and event delivery all progress independently, so a peer that
//! stops reading (say, after refusing an oversize packet) cannot keep us from reading its
//! error.

use std::any::Any;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::call::{Call, CallError, CallEvent, Role};

/// Events queued per call before the task stops reading its stream.
const EVENT_QUEUE: usize = 16;
/// Commands queued per call before senders wait.
const COMMAND_QUEUE: usize = 16;
const READ_BUF: usize = 16 * 1024;

/// What the user of a call asks for.
#[derive(Debug)]
pub(crate) enum Command {
    Message(Vec<u8>),
    CloseSend,
    Close,
    Cancel,
    /// A server's error answer.
    #[cfg(any(test, feature = "test-servers"))]
    Error {
        code: u64,
        text: String,
    },
}

/// What the call task reports.
#[derive(Debug)]
pub(crate) enum Inbound {
    Event(CallEvent),
    /// The peer broke the protocol; the call is over.
    Protocol(CallError),
    /// Reading or writing the transport stream failed; the call is over.
    Io(io::Error),
}

/// The user's end of a call task. Dropping `cmds` means "nothing more to send" (a client
/// sends close-send); dropping both ends the call (a client sends close if the call was
/// still running; a server just closes its transport stream, having sent its close-send or
/// error already).
pub(crate) struct CallHandle {
    pub cmds: mpsc::Sender<Command>,
    pub events: mpsc::Receiver<Inbound>,
}

/// Starts the task. `keep` is held until the task ends (a client keeps its yamux session
/// alive this way).
pub(crate) fn spawn<S>(io: S, call: Call, keep: Option<Box<dyn Any + Send>>) -> CallHandle
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(async move {
        run(io, call, cmd_rx, ev_tx).await;
        drop(keep);
    });
    CallHandle {
        cmds: cmd_tx,
        events: ev_rx,
    }
}

async fn run<S>(
    io: S,
    mut call: Call,
    mut cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<Inbound>,
) where
    S: AsyncRead + AsyncWrite,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = vec![0u8; READ_BUF];
    // Bytes to write: `out[written..]`.
    let mut out: Vec<u8> = Vec::new();
    let mut written = 0;
    let mut need_flush = false;
    let mut write_err: Option<io::Error> = None;
    let mut pending: Option<Inbound> = None;
    let mut cmds_open = true;
    let mut read_open = true;
    loop {
        while let Some(bytes) = call.poll_transmit() {
            if write_err.is_none() {
                out.extend_from_slice(&bytes);
            }
        }
        if pending.is_none() {
            pending = call.poll_event().map(Inbound::Event);
        }
        let writing = write_err.is_none() && (written < out.len() || need_flush);
        let events_gone = events.is_closed();
        if pending.is_none() && !writing {
            if call.is_finished() {
                break;
            }
            if !read_open && write_err.is_some() {
                break;
            }
            if !cmds_open && events_gone {
                // Nobody is left to use the call.
                if call.role() == Role::Client {
                    call.close();
                    continue;
                }
                break;
            }
        }
        tokio::select! {
            permit = events.reserve(), if pending.is_some() => {
                if let (Ok(permit), Some(item)) = (permit, pending.take()) {
                    permit.send(item);
                } else {
                    pending = None;
                }
            }
            cmd = cmds.recv(), if cmds_open => match cmd {
                Some(cmd) => apply(&mut call, cmd),
                None => {
                    cmds_open = false;
                    if call.role() == Role::Client {
                        call.close_send();
                    }
                }
            },
            result = write_some(&mut wr, &out[written..]), if writing => match result {
                Ok(0) => need_flush = false,
                Ok(n) => {
                    written += n;
                    if written == out.len() {
                        out.clear();
                        written = 0;
                    }
                    need_flush = true;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "drpc call: write failed");
                    out.clear();
                    written = 0;
                    write_err = Some(e);
                }
            },
            read = rd.read(&mut buf), if read_open && pending.is_none() => match read {
                Ok(0) => {
                    read_open = false;
                    if let Err(e) = call.handle_eof() {
                        pending = Some(match write_err.take() {
                            Some(w) => Inbound::Io(w),
                            None => Inbound::Protocol(e),
                        });
                    }
                }
                Ok(n) => {
                    if let Err(e) = call.handle_input(&buf[..n]) {
                        tracing::debug!(error = %e, "drpc call: bad input");
                        read_open = false;
                        pending = Some(Inbound::Protocol(e));
                    }
                }
                Err(e) => {
                    read_open = false;
                    if !call.is_finished() {
                        pending = Some(Inbound::Io(e));
                    }
                }
            },
            // Wakes the loop when the user drops the receiving end.
            () = events.closed(), if !events_gone => {}
            else => break,
        }
    }
    if write_err.is_none()
        && let Err(e) = wr.shutdown().await
    {
        tracing::trace!(error = %e, "drpc call: closing the transport stream failed");
    }
}

/// Writes some of `out` (never 0 bytes), or flushes when `out` is empty (and says 0).
async fn write_some<W: AsyncWrite + Unpin>(wr: &mut W, out: &[u8]) -> io::Result<usize> {
    if out.is_empty() {
        wr.flush().await?;
        return Ok(0);
    }
    match wr.write(out).await? {
        0 => Err(io::ErrorKind::WriteZero.into()),
        n => Ok(n),
    }
}

fn apply(call: &mut Call, cmd: Command) {
    match cmd {
        Command::Message(m) => {
            if !call.send_message(&m) {
                tracing::debug!("drpc call: message after the call ended dropped");
            }
        }
        Command::CloseSend => call.close_send(),
        Command::Close => call.close(),
        Command::Cancel => call.cancel(),
        #[cfg(any(test, feature = "test-servers"))]
        Command::Error { code, text } => call.send_error(code, &text),
    }
}
