//! `/api/v2/tailnet?version=2.x`: websocket → yamux → dRPC, serving `coder.tailnet.v2.Tailnet`
//! from the deployment: `WorkspaceUpdates` (a snapshot, then diffs as the deployment
//! changes), `StreamDERPMaps`, `RefreshResumeToken` (tokens bind the connection's peer id,
//! honoured on reconnect), and `Coordinate` (through the [`Coordinator`], which relays
//! nodes between this client and the simulated agents).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use codervpn_engine::session::BoxFuture;
use codervpn_engine::session::rpc::{Requests, Sink, Status, TailnetService};
use codervpn_proto::tailnet::{
    CoordinateRequest, CoordinateResponse, DerpMap, RefreshResumeTokenRequest,
    RefreshResumeTokenResponse, StreamDerpMapsRequest, WorkspaceUpdate, WorkspaceUpdatesRequest,
};
use tokio::sync::watch;
use tracing::debug;

use crate::coord::{Coordinator, PeerId};
use crate::model::{Deployment, Uuid};

/// How long a resume token says to wait before refreshing, and how long it lives.
const REFRESH_IN: Duration = Duration::from_secs(30 * 60);
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What every tailnet connection shares.
pub(crate) struct TailnetShared {
    pub(crate) deployment: watch::Receiver<Arc<Deployment>>,
    pub(crate) derp_map: DerpMap,
    pub(crate) coordinator: Coordinator,
    /// Resume token → (peer id, expiry).
    pub(crate) tokens: Mutex<HashMap<String, (PeerId, SystemTime)>>,
    /// Connections that presented a resume token we honoured.
    pub(crate) resumed: std::sync::atomic::AtomicU64,
    /// Fault: answer tailnet upgrades with 503.
    pub(crate) unavailable: std::sync::atomic::AtomicBool,
}

/// Why a resume token was not honoured.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ResumeError {
    Unknown,
    Expired,
}

impl TailnetShared {
    /// The peer id a resume token stands for.
    pub(crate) fn resume(&self, token: &str) -> Result<PeerId, ResumeError> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match tokens.get(token) {
            Some((peer, expires)) if *expires > SystemTime::now() => {
                self.resumed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(*peer)
            }
            Some(_) => Err(ResumeError::Expired),
            None => Err(ResumeError::Unknown),
        }
    }
}

/// One tailnet connection's service: the shared state plus the peer id it acts for.
pub(crate) struct TestbedTailnet {
    pub(crate) shared: Arc<TailnetShared>,
    pub(crate) peer: PeerId,
}

impl TailnetService for TestbedTailnet {
    fn workspace_updates(
        self: Arc<Self>,
        request: WorkspaceUpdatesRequest,
        updates: Sink<WorkspaceUpdate>,
    ) -> BoxFuture<Result<(), Status>> {
        Box::pin(async move {
            let mut deployment = self.shared.deployment.clone();
            let mut current = deployment.borrow_and_update().clone();
            if request.workspace_owner_id != current.user_id.0 {
                return Err(Status::new(
                    0,
                    format!(
                        "workspace_owner_id {} is not the authenticated user {}",
                        hex::encode(&request.workspace_owner_id),
                        current.user_id
                    ),
                ));
            }
            if updates.send(&diff(None, &current)).await.is_err() {
                return Ok(());
            }
            loop {
                tokio::select! {
                    changed = deployment.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        let next = deployment.borrow_and_update().clone();
                        let update = diff(Some(&current), &next);
                        current = next;
                        if updates.send(&update).await.is_err() {
                            return Ok(());
                        }
                    }
                    () = updates.closed() => return Ok(()),
                }
            }
        })
    }

    fn stream_derp_maps(
        self: Arc<Self>,
        _request: StreamDerpMapsRequest,
        maps: Sink<DerpMap>,
    ) -> BoxFuture<Result<(), Status>> {
        Box::pin(async move {
            if maps.send(&self.shared.derp_map).await.is_ok() {
                maps.closed().await;
            }
            Ok(())
        })
    }

    fn refresh_resume_token(
        self: Arc<Self>,
        _request: RefreshResumeTokenRequest,
    ) -> BoxFuture<Result<RefreshResumeTokenResponse, Status>> {
        Box::pin(async move {
            let expires = SystemTime::now() + TOKEN_LIFETIME;
            let token = format!("resume-{}", Uuid::random());
            self.shared
                .tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(token.clone(), (self.peer, expires));
            let secs = expires
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            Ok(RefreshResumeTokenResponse {
                token,
                refresh_in: Some(prost_types::Duration {
                    seconds: REFRESH_IN.as_secs() as i64,
                    nanos: 0,
                }),
                expires_at: Some(prost_types::Timestamp {
                    seconds: secs as i64,
                    nanos: 0,
                }),
            })
        })
    }

    fn coordinate(
        self: Arc<Self>,
        mut requests: Requests<CoordinateRequest>,
        responses: Sink<CoordinateResponse>,
    ) -> BoxFuture<Result<(), Status>> {
        Box::pin(async move {
            let coordinator = &self.shared.coordinator;
            let (generation, mut outgoing) = coordinator.connect_client(self.peer);
            loop {
                tokio::select! {
                    req = requests.message() => match req {
                        Ok(Some(req)) => {
                            if !coordinator.handle(self.peer, req) {
                                return Ok(());
                            }
                        }
                        Ok(None) | Err(_) => break,
                    },
                    Some(resp) = outgoing.recv() => {
                        if responses.send(&resp).await.is_err() {
                            break;
                        }
                    }
                }
            }
            debug!(peer = %self.peer, "coordinate stream ended without disconnect");
            coordinator.client_lost(self.peer, generation);
            Ok(())
        })
    }
}

/// The update that turns `before` (nothing, for a snapshot) into `after`.
pub(crate) fn diff(before: Option<&Deployment>, after: &Deployment) -> WorkspaceUpdate {
    use codervpn_proto::tailnet::{Agent, Workspace};
    let ws = |w: &crate::model::Workspace| Workspace {
        id: w.id.0.to_vec(),
        name: w.name.clone(),
        status: w.status,
    };
    let agent = |w: &crate::model::Workspace, a: &crate::model::Agent| Agent {
        id: a.id.0.to_vec(),
        name: a.name.clone(),
        workspace_id: w.id.0.to_vec(),
    };
    let mut update = WorkspaceUpdate::default();
    let old_ws: HashMap<Uuid, &crate::model::Workspace> = before
        .map(|b| b.workspaces.iter().map(|w| (w.id, w)).collect())
        .unwrap_or_default();
    let old_agents: HashMap<Uuid, (&crate::model::Workspace, &crate::model::Agent)> = before
        .map(|b| {
            b.workspaces
                .iter()
                .flat_map(|w| w.agents.iter().map(move |a| (a.id, (w, a))))
                .collect()
        })
        .unwrap_or_default();
    let mut seen_ws = Vec::new();
    let mut seen_agents = Vec::new();
    for w in &after.workspaces {
        seen_ws.push(w.id);
        let changed = old_ws
            .get(&w.id)
            .is_none_or(|o| o.name != w.name || o.status != w.status);
        if changed {
            update.upserted_workspaces.push(ws(w));
        }
        for a in &w.agents {
            seen_agents.push(a.id);
            if old_agents
                .get(&a.id)
                .is_none_or(|(ow, oa)| oa.name != a.name || ow.id != w.id)
            {
                update.upserted_agents.push(agent(w, a));
            }
        }
    }
    for (id, (w, a)) in &old_agents {
        if !seen_agents.contains(id) {
            update.deleted_agents.push(agent(w, a));
        }
    }
    for (id, w) in &old_ws {
        if !seen_ws.contains(id) {
            update.deleted_workspaces.push(ws(w));
        }
    }
    update
}
