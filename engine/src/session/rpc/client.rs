//! Client calls: unary, server stream, bidirectional stream (tailnet.md §4.2 call shapes),
//! each on its own yamux stream as dRPC stream 1.

use std::marker::PhantomData;
use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;

use super::RpcError;
use super::call::{Call, CallEvent};
use super::driver::{self, CallHandle, Command, Inbound};
use super::mux::{self, MuxClient};

/// Makes calls over a yamux client session. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RpcClient {
    mux: MuxClient,
}

impl RpcClient {
    pub fn new(mux: MuxClient) -> Self {
        Self { mux }
    }

    /// The yamux session underneath (to close it or wait for its end).
    pub fn mux(&self) -> &MuxClient {
        &self.mux
    }

    /// Unary call: invoke, message, close-send; one message and close-send back, or an
    /// error. After the reply the client sends close if the server's close-send has not
    /// been processed yet, then closes the yamux stream (drpcconn `Invoke`).
    pub async fn unary<Req, Resp>(&self, path: &str, req: &Req) -> Result<Resp, RpcError>
    where
        Req: Message,
        Resp: Message + Default,
    {
        let mut call = Call::client(path);
        call.send_message(&req.encode_to_vec());
        call.close_send();
        let mut handle = self.start(path, call).await?;
        let path: Arc<str> = path.into();
        let Some(reply) = recv(&path, &mut handle.events).await? else {
            return Err(RpcError::NoReply {
                path: path.to_string(),
            });
        };
        // A second message would be a server bug; drpc's client never reads it either.
        let _ = handle.cmds.send(Command::Close).await;
        decode::<Resp>(&path, &reply)
    }

    /// Server-streaming call: invoke, message, close-send; then read the replies.
    pub async fn server_stream<Req, Resp>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Responses<Resp>, RpcError>
    where
        Req: Message,
        Resp: Message + Default,
    {
        let mut call = Call::client(path);
        call.send_message(&req.encode_to_vec());
        call.close_send();
        let handle = self.start(path, call).await?;
        Ok(Responses::new(
            path.into(),
            handle.events,
            Some(handle.cmds),
        ))
    }

    /// Bidirectional call: invoke now, then messages both ways.
    pub async fn bidi<Req, Resp>(&self, path: &str) -> Result<BidiStream<Req, Resp>, RpcError>
    where
        Req: Message,
        Resp: Message + Default,
    {
        let handle = self.start(path, Call::client(path)).await?;
        let path: Arc<str> = path.into();
        Ok(BidiStream {
            sender: BidiSender {
                path: path.clone(),
                cmds: handle.cmds,
                _req: PhantomData,
            },
            responses: Responses::new(path, handle.events, None),
        })
    }

    async fn start(&self, path: &str, call: Call) -> Result<CallHandle, RpcError> {
        let stream = self.mux.open().await.map_err(|source| RpcError::Open {
            path: path.to_owned(),
            source,
        })?;
        tracing::trace!(path, "drpc call started");
        Ok(driver::spawn(
            stream,
            call,
            Some(mux::keep_alive_token(&self.mux)),
        ))
    }
}

/// Replies of a streaming call. Dropping it (and its sender, for a bidirectional call)
/// closes the call.
pub struct Responses<Resp> {
    path: Arc<str>,
    events: mpsc::Receiver<Inbound>,
    /// Held by a server-streaming call so the call lives as long as its replies are read.
    _cmds: Option<mpsc::Sender<Command>>,
    done: bool,
    _resp: PhantomData<fn() -> Resp>,
}

impl<Resp> std::fmt::Debug for Responses<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responses")
            .field("path", &self.path)
            .field("done", &self.done)
            .finish()
    }
}

impl<Resp: Message + Default> Responses<Resp> {
    fn new(
        path: Arc<str>,
        events: mpsc::Receiver<Inbound>,
        cmds: Option<mpsc::Sender<Command>>,
    ) -> Self {
        Self {
            path,
            events,
            _cmds: cmds,
            done: false,
            _resp: PhantomData,
        }
    }

    /// The next reply; `Ok(None)` once the server ended the stream normally (close-send, or
    /// close). An error packet, a cancel or a broken stream is an error; after `None` or an
    /// error every call returns `Ok(None)`.
    pub async fn message(&mut self) -> Result<Option<Resp>, RpcError> {
        if self.done {
            return Ok(None);
        }
        match recv(&self.path, &mut self.events).await {
            Ok(Some(bytes)) => match decode::<Resp>(&self.path, &bytes) {
                Ok(m) => Ok(Some(m)),
                Err(e) => {
                    self.done = true;
                    Err(e)
                }
            },
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(RpcError::Closed { .. }) => {
                // drpc reports a remote close as the end of the stream.
                self.done = true;
                Ok(None)
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// A bidirectional call: send requests, read replies; [`BidiStream::split`] gives the two
/// halves to different tasks.
pub struct BidiStream<Req, Resp> {
    sender: BidiSender<Req>,
    responses: Responses<Resp>,
}

impl<Req: Message, Resp: Message + Default> BidiStream<Req, Resp> {
    pub async fn send(&self, msg: &Req) -> Result<(), RpcError> {
        self.sender.send(msg).await
    }

    pub async fn message(&mut self) -> Result<Option<Resp>, RpcError> {
        self.responses.message().await
    }

    /// Sends close-send: no more requests; replies keep coming.
    pub async fn close_send(&self) -> Result<(), RpcError> {
        self.sender.close_send().await
    }

    /// Ends the call for both sides (close), then the yamux stream.
    pub async fn close(self) {
        let _ = self.sender.cmds.send(Command::Close).await;
    }

    /// Cancels the call (cancel packet), then the yamux stream.
    pub async fn cancel(self) {
        let _ = self.sender.cmds.send(Command::Cancel).await;
    }

    pub fn split(self) -> (BidiSender<Req>, Responses<Resp>) {
        (self.sender, self.responses)
    }
}

/// The sending half of a bidirectional call. Dropping it sends close-send.
pub struct BidiSender<Req> {
    path: Arc<str>,
    cmds: mpsc::Sender<Command>,
    _req: PhantomData<fn(Req)>,
}

impl<Req: Message> BidiSender<Req> {
    /// Queues one request; fails once the call is over.
    pub async fn send(&self, msg: &Req) -> Result<(), RpcError> {
        self.cmd(Command::Message(msg.encode_to_vec())).await
    }

    /// Sends close-send: no more requests.
    pub async fn close_send(&self) -> Result<(), RpcError> {
        self.cmd(Command::CloseSend).await
    }

    /// Waits until the call is over (its task ended).
    pub async fn closed(&self) {
        self.cmds.closed().await;
    }

    async fn cmd(&self, cmd: Command) -> Result<(), RpcError> {
        self.cmds.send(cmd).await.map_err(|_| RpcError::CallOver {
            path: self.path.to_string(),
        })
    }
}

/// The next message of a call: `Ok(None)` at the peer's close-send (or when the call task
/// ended without saying why), `Err` for everything that ends a call abnormally.
pub(crate) async fn recv(
    path: &str,
    events: &mut mpsc::Receiver<Inbound>,
) -> Result<Option<Vec<u8>>, RpcError> {
    let path = || path.to_owned();
    loop {
        let Some(inbound) = events.recv().await else {
            return Ok(None);
        };
        match inbound {
            Inbound::Event(CallEvent::Message(bytes)) => return Ok(Some(bytes)),
            Inbound::Event(CallEvent::RemoteDone) => return Ok(None),
            Inbound::Event(CallEvent::RemoteError { code, text }) => {
                return Err(RpcError::Remote {
                    path: path(),
                    code,
                    text,
                });
            }
            Inbound::Event(CallEvent::Canceled) => return Err(RpcError::Canceled { path: path() }),
            Inbound::Event(CallEvent::Closed) => return Err(RpcError::Closed { path: path() }),
            Inbound::Event(CallEvent::Invoked { .. }) => {
                // Only a server call reports invokes; a client's Call never does.
                continue;
            }
            Inbound::Protocol(source) => {
                return Err(RpcError::Protocol {
                    path: path(),
                    source,
                });
            }
            Inbound::Io(source) => {
                return Err(RpcError::Io {
                    path: path(),
                    source,
                });
            }
        }
    }
}

pub(crate) fn decode<M: Message + Default>(path: &str, bytes: &[u8]) -> Result<M, RpcError> {
    M::decode(bytes).map_err(|source| RpcError::Decode {
        path: path.to_owned(),
        message: short_type_name::<M>(),
        source,
    })
}

pub(crate) fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}
