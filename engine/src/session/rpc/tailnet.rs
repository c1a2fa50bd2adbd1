//! Service `coder.tailnet.v2.Tailnet` (tailnet.md §4.2): the typed client the VPN uses and
//! the trait a server (the testbed) implements.

#[cfg(any(test, feature = "test-servers"))]
use std::sync::Arc;

use codervpn_proto::tailnet::{
    CoordinateRequest, CoordinateResponse, DerpMap, RefreshResumeTokenRequest,
    RefreshResumeTokenResponse, StreamDerpMapsRequest, WorkspaceUpdate, WorkspaceUpdatesRequest,
};
use url::Url;

use super::RpcError;
use super::client::{BidiStream, Responses, RpcClient};
use super::dial::{self, DialError, DialOptions};
#[cfg(any(test, feature = "test-servers"))]
use super::server::{Requests, Router, Sink, Status};
#[cfg(any(test, feature = "test-servers"))]
use crate::session::BoxFuture;

/// dRPC method paths.
pub mod paths {
    pub const COORDINATE: &str = "/coder.tailnet.v2.Tailnet/Coordinate";
    pub const STREAM_DERP_MAPS: &str = "/coder.tailnet.v2.Tailnet/StreamDERPMaps";
    pub const WORKSPACE_UPDATES: &str = "/coder.tailnet.v2.Tailnet/WorkspaceUpdates";
    pub const REFRESH_RESUME_TOKEN: &str = "/coder.tailnet.v2.Tailnet/RefreshResumeToken";
    pub const POST_TELEMETRY: &str = "/coder.tailnet.v2.Tailnet/PostTelemetry";
}

/// A `coder.tailnet.v2.Tailnet` client. Cheap to clone; every call opens its own yamux
/// stream.
#[derive(Debug, Clone)]
pub struct TailnetClient {
    rpc: RpcClient,
}

impl TailnetClient {
    pub fn new(rpc: RpcClient) -> Self {
        Self { rpc }
    }

    /// Dials `<base>/api/v2/tailnet?version=2.3` (tailnet.md §4.1).
    pub async fn dial(base: &Url, opts: &DialOptions) -> Result<Self, DialError> {
        dial::dial(base, opts).await.map(Self::new)
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    /// `Coordinate`: bidirectional stream of `CoordinateRequest` ⇄ `CoordinateResponse`.
    pub async fn coordinate(
        &self,
    ) -> Result<BidiStream<CoordinateRequest, CoordinateResponse>, RpcError> {
        self.rpc.bidi(paths::COORDINATE).await
    }

    /// `WorkspaceUpdates` for the user with this 16-byte UUID: server stream of
    /// `WorkspaceUpdate`.
    pub async fn workspace_updates(
        &self,
        owner_id: &[u8],
    ) -> Result<Responses<WorkspaceUpdate>, RpcError> {
        let req = WorkspaceUpdatesRequest {
            workspace_owner_id: owner_id.to_vec(),
        };
        self.rpc.server_stream(paths::WORKSPACE_UPDATES, &req).await
    }

    /// `StreamDERPMaps`: server stream of `DERPMap`.
    pub async fn stream_derp_maps(&self) -> Result<Responses<DerpMap>, RpcError> {
        self.rpc
            .server_stream(paths::STREAM_DERP_MAPS, &StreamDerpMapsRequest {})
            .await
    }

    /// `RefreshResumeToken` (unary).
    pub async fn refresh_resume_token(&self) -> Result<RefreshResumeTokenResponse, RpcError> {
        self.rpc
            .unary(paths::REFRESH_RESUME_TOKEN, &RefreshResumeTokenRequest {})
            .await
    }

    /// Closes the yamux session (and with it the websocket).
    pub async fn close(&self) {
        self.rpc.mux().close().await;
    }
}

#[cfg(any(test, feature = "test-servers"))]
/// The server side of `coder.tailnet.v2.Tailnet`. Every method defaults to the generated
/// drpc stub's answer, code 12 `Unimplemented`. Returning `Ok` ends a stream with
/// close-send; `Err` sends the status as an error packet.
pub trait TailnetService: Send + Sync + 'static {
    fn coordinate(
        self: Arc<Self>,
        requests: Requests<CoordinateRequest>,
        responses: Sink<CoordinateResponse>,
    ) -> BoxFuture<Result<(), Status>> {
        let _ = (requests, responses);
        Box::pin(async { Err(Status::unimplemented()) })
    }

    fn stream_derp_maps(
        self: Arc<Self>,
        request: StreamDerpMapsRequest,
        maps: Sink<DerpMap>,
    ) -> BoxFuture<Result<(), Status>> {
        let _ = (request, maps);
        Box::pin(async { Err(Status::unimplemented()) })
    }

    fn workspace_updates(
        self: Arc<Self>,
        request: WorkspaceUpdatesRequest,
        updates: Sink<WorkspaceUpdate>,
    ) -> BoxFuture<Result<(), Status>> {
        let _ = (request, updates);
        Box::pin(async { Err(Status::unimplemented()) })
    }

    fn refresh_resume_token(
        self: Arc<Self>,
        request: RefreshResumeTokenRequest,
    ) -> BoxFuture<Result<RefreshResumeTokenResponse, Status>> {
        let _ = request;
        Box::pin(async { Err(Status::unimplemented()) })
    }
}

#[cfg(any(test, feature = "test-servers"))]
/// A router serving `service`'s four methods (`PostTelemetry` is not routed, so it gets
/// drpcmux's unknown-rpc error).
pub fn router<S: TailnetService>(service: Arc<S>) -> Router {
    let coordinate = service.clone();
    let derp = service.clone();
    let updates = service.clone();
    let refresh = service;
    Router::new()
        .bidi(paths::COORDINATE, move |req, resp| {
            coordinate.clone().coordinate(req, resp)
        })
        .server_stream(paths::STREAM_DERP_MAPS, move |req, sink| {
            derp.clone().stream_derp_maps(req, sink)
        })
        .server_stream(paths::WORKSPACE_UPDATES, move |req, sink| {
            updates.clone().workspace_updates(req, sink)
        })
        .unary(paths::REFRESH_RESUME_TOKEN, move |req| {
            refresh.clone().refresh_resume_token(req)
        })
}
