//! Serving calls: a method router (like drpcmux) and the three handler shapes, one call per
//! yamux stream.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::call::{Call, CallEvent};
use super::client::{decode, recv, short_type_name};
use super::driver::{self, Command, Inbound};
use super::mux::{self, MuxError, MuxStream};
use super::{RpcError, codec, unknown_rpc_text};
use crate::session::BoxFuture;

/// The error a handler answers with: an error packet with this code and text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct Status {
    pub code: u64,
    pub message: String,
}

impl Status {
    pub fn new(code: u64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// What the generated drpc server stubs answer for a method a server does not implement:
    /// code 12, text `Unimplemented`.
    pub fn unimplemented() -> Self {
        Self::new(codec::CODE_UNIMPLEMENTED, "Unimplemented")
    }
}

/// The sending end of a server call's replies.
pub struct Sink<Resp> {
    cmds: mpsc::Sender<Command>,
    _resp: PhantomData<fn(Resp)>,
}

impl<Resp: Message> Sink<Resp> {
    /// Sends one reply; fails once the call is over (the client cancelled, closed or went
    /// away).
    pub async fn send(&self, msg: &Resp) -> Result<(), CallGone> {
        self.cmds
            .send(Command::Message(msg.encode_to_vec()))
            .await
            .map_err(|_| CallGone)
    }

    /// Resolves when the call is over, e.g. the client cancelled it: a handler waiting on
    /// something else selects on this.
    pub async fn closed(&self) {
        self.cmds.closed().await;
    }
}

/// The call a handler tried to use has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the call is over")]
pub struct CallGone;

/// The requests of a bidirectional call.
pub struct Requests<Req> {
    path: Arc<str>,
    events: mpsc::Receiver<Inbound>,
    done: bool,
    _req: PhantomData<fn() -> Req>,
}

impl<Req: Message + Default> Requests<Req> {
    /// The next request; `Ok(None)` after the client's close-send. A cancel, close or broken
    /// stream is an error; after `None` or an error, `Ok(None)`.
    pub async fn message(&mut self) -> Result<Option<Req>, RpcError> {
        if self.done {
            return Ok(None);
        }
        let result = match recv(&self.path, &mut self.events).await {
            Ok(Some(bytes)) => decode::<Req>(&self.path, &bytes).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }
}

type UnaryFn = dyn Fn(Vec<u8>) -> BoxFuture<Result<Vec<u8>, Status>> + Send + Sync;
type ServerStreamFn =
    dyn Fn(Vec<u8>, mpsc::Sender<Command>) -> BoxFuture<Result<(), Status>> + Send + Sync;
type BidiFn = dyn Fn(Arc<str>, mpsc::Receiver<Inbound>, mpsc::Sender<Command>) -> BoxFuture<Result<(), Status>>
    + Send
    + Sync;

enum Method {
    Unary(Box<UnaryFn>),
    ServerStream(Box<ServerStreamFn>),
    Bidi(Box<BidiFn>),
}

/// Method path → handler. Unknown paths get drpcmux's answer: an error packet with code 0
/// and text `protocol error: unknown rpc: "<path>"`.
#[derive(Default)]
pub struct Router {
    methods: HashMap<String, Method>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut paths: Vec<&str> = self.methods.keys().map(String::as_str).collect();
        paths.sort_unstable();
        f.debug_struct("Router").field("methods", &paths).finish()
    }
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// A unary method: one request, one reply or an error.
    pub fn unary<Req, Resp, F, Fut>(mut self, path: &str, handler: F) -> Self
    where
        Req: Message + Default + 'static,
        Resp: Message + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let f = move |bytes: Vec<u8>| -> BoxFuture<Result<Vec<u8>, Status>> {
            let handler = handler.clone();
            Box::pin(async move {
                let req = decode_request::<Req>(&bytes)?;
                handler(req).await.map(|r| r.encode_to_vec())
            })
        };
        self.methods
            .insert(path.to_owned(), Method::Unary(Box::new(f)));
        self
    }

    /// A server-streaming method: one request, replies through the [`Sink`].
    pub fn server_stream<Req, Resp, F, Fut>(mut self, path: &str, handler: F) -> Self
    where
        Req: Message + Default + 'static,
        Resp: Message + 'static,
        F: Fn(Req, Sink<Resp>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let f = move |bytes: Vec<u8>, cmds| -> BoxFuture<Result<(), Status>> {
            let handler = handler.clone();
            Box::pin(async move {
                let req = decode_request::<Req>(&bytes)?;
                handler(req, sink(cmds)).await
            })
        };
        self.methods
            .insert(path.to_owned(), Method::ServerStream(Box::new(f)));
        self
    }

    /// A bidirectional method: requests from [`Requests`], replies through the [`Sink`].
    pub fn bidi<Req, Resp, F, Fut>(mut self, path: &str, handler: F) -> Self
    where
        Req: Message + Default + 'static,
        Resp: Message + 'static,
        F: Fn(Requests<Req>, Sink<Resp>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let f = move |path: Arc<str>, events, cmds| -> BoxFuture<Result<(), Status>> {
            let requests = Requests {
                path,
                events,
                done: false,
                _req: PhantomData,
            };
            Box::pin(handler(requests, sink(cmds)))
        };
        self.methods
            .insert(path.to_owned(), Method::Bidi(Box::new(f)));
        self
    }
}

fn sink<Resp>(cmds: mpsc::Sender<Command>) -> Sink<Resp> {
    Sink {
        cmds,
        _resp: PhantomData,
    }
}

fn decode_request<Req: Message + Default>(bytes: &[u8]) -> Result<Req, Status> {
    Req::decode(bytes).map_err(|e| {
        Status::new(
            0,
            format!("cannot decode {} request: {e}", short_type_name::<Req>()),
        )
    })
}

/// Serves a yamux session (the server side of a tailnet connection) until it ends, one task
/// per stream.
pub async fn serve_mux<T>(io: T, router: Arc<Router>) -> Result<(), MuxError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    mux::serve(io, |stream| {
        tokio::spawn(serve_stream(stream, router.clone()));
    })
    .await
}

/// Serves the one call on an accepted yamux stream.
pub async fn serve_stream(mut stream: MuxStream, router: Arc<Router>) {
    if let Err(e) = mux::acknowledge(&mut stream).await {
        tracing::debug!(error = %e, "cannot acknowledge a yamux stream");
        return;
    }
    let mut handle = driver::spawn(stream, Call::server(), None);
    let path: Arc<str> = match handle.events.recv().await {
        Some(Inbound::Event(CallEvent::Invoked { path })) => path.into(),
        Some(other) => {
            tracing::debug!(?other, "drpc call ended before its invoke");
            return;
        }
        None => return,
    };
    let Some(method) = router.methods.get(&*path) else {
        tracing::debug!(%path, "drpc call of an unknown method");
        let text = unknown_rpc_text(&path);
        let _ = handle.cmds.send(Command::Error { code: 0, text }).await;
        return;
    };
    tracing::trace!(%path, "drpc call");
    let cmds = handle.cmds.clone();
    let outcome = match method {
        Method::Unary(f) => match first_request(&path, &mut handle.events).await {
            Ok(req) => f(req).await.map(Some),
            Err(status) => Err(status),
        },
        Method::ServerStream(f) => match first_request(&path, &mut handle.events).await {
            Ok(req) => f(req, handle.cmds.clone()).await.map(|()| None),
            Err(status) => Err(status),
        },
        Method::Bidi(f) => {
            let (_, dummy) = mpsc::channel(1);
            let events = std::mem::replace(&mut handle.events, dummy);
            f(path.clone(), events, handle.cmds.clone())
                .await
                .map(|()| None)
        }
    };
    match outcome {
        Ok(reply) => {
            if let Some(reply) = reply {
                let _ = cmds.send(Command::Message(reply)).await;
            }
            let _ = cmds.send(Command::CloseSend).await;
        }
        Err(status) => {
            tracing::debug!(%path, %status, "drpc call failed");
            let _ = cmds
                .send(Command::Error {
                    code: status.code,
                    text: status.message,
                })
                .await;
        }
    }
}

/// The request of a unary or server-streaming call.
async fn first_request(
    path: &str,
    events: &mut mpsc::Receiver<Inbound>,
) -> Result<Vec<u8>, Status> {
    match recv(path, events).await {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(Status::new(
            0,
            format!("protocol error: call of {path} ended before its request message"),
        )),
        Err(e) => Err(Status::new(0, e.to_string())),
    }
}
