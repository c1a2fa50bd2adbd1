//! The tokio shell around one [`Call`]: a task that owns the transport stream (a yamux
//! stream), feeds it to the call, writes what the call queues, and talks to the user of the
//! call through two bounded channels.

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
    Error { code: u64, text: String },
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

/// The user's end of a call task. Dropping `cmds` means "nothing more to send"; dropping
/// both ends the call (a client sends close if the call was still running; a server just
/// closes its transport stream, having sent its close-send or error already).
pub(crate) struct CallHandle {
    pub cmds: mpsc::Sender<Command>,
    pub events: mpsc::Receiver<Inbound>,
}

/// Starts the task. `keep` is held until the task ends (a client keeps its yamux session
/// alive this way).
pub(crate) fn spawn<S>(io: S, call: Call, keep: Option<Box<dyn Any + Send>>) -> CallHandle
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
    mut io: S,
    mut call: Call,
    mut cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<Inbound>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; READ_BUF];
    let mut pending: Option<Inbound> = None;
    let mut cmds_open = true;
    let mut read_open = true;
    let mut broken = false;
    loop {
        if !broken {
            if let Err(e) = flush(&mut io, &mut call).await {
                tracing::debug!(error = %e, "drpc call: write failed");
                broken = true;
                read_open = false;
                if pending.is_none() {
                    pending = Some(Inbound::Io(e));
                }
            }
        }
        if pending.is_none() {
            pending = call.poll_event().map(Inbound::Event);
        }
        let Some(next) = pending.take() else {
            if call.is_finished() || broken {
                break;
            }
            let events_gone = events.is_closed();
            if !cmds_open && events_gone {
                // Nobody is left to use the call.
                if call.role() == Role::Client {
                    call.close();
                    continue;
                }
                break;
            }
            tokio::select! {
                cmd = cmds.recv(), if cmds_open => match cmd {
                    Some(cmd) => apply(&mut call, cmd),
                    None => {
                        cmds_open = false;
                        if call.role() == Role::Client {
                            call.close_send();
                        }
                    }
                },
                read = io.read(&mut buf), if read_open => match read {
                    Ok(0) => {
                        read_open = false;
                        if let Err(e) = call.handle_eof() {
                            pending = Some(Inbound::Protocol(e));
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
                        broken = true;
                        pending = Some(Inbound::Io(e));
                    }
                },
                // Wakes the loop when the user drops the receiving end.
                () = events.closed(), if !events_gone => {}
                else => {
                    // Neither commands nor input can arrive any more.
                    break;
                }
            }
            continue;
        };
        // Deliver `next`, still taking commands meanwhile so a sender is never blocked
        // behind a reader that does not read.
        let mut next = Some(next);
        while let Some(item) = next.take() {
            tokio::select! {
                biased;
                permit = events.reserve() => {
                    if let Ok(permit) = permit {
                        permit.send(item);
                    }
                }
                cmd = cmds.recv(), if cmds_open => {
                    next = Some(item);
                    match cmd {
                        Some(cmd) => apply(&mut call, cmd),
                        None => cmds_open = false,
                    }
                    if !broken && flush(&mut io, &mut call).await.is_err() {
                        broken = true;
                    }
                }
            }
        }
    }
    // Whatever the call queued last (a close, an error) goes out before the FIN.
    if !broken {
        let _ = flush(&mut io, &mut call).await;
    }
    if let Err(e) = io.shutdown().await {
        tracing::trace!(error = %e, "drpc call: closing the transport stream failed");
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
        Command::Error { code, text } => call.send_error(code, &text),
    }
}

async fn flush<S: AsyncWrite + Unpin>(io: &mut S, call: &mut Call) -> io::Result<()> {
    let mut wrote = false;
    while let Some(bytes) = call.poll_transmit() {
        io.write_all(&bytes).await?;
        wrote = true;
    }
    if wrote {
        io.flush().await?;
    }
    Ok(())
}
