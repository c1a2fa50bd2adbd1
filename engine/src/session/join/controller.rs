//! The tailnet controller (tailnet.md §4, §6–§8): dials `/api/v2/tailnet`, runs
//! `Coordinate`, `WorkspaceUpdates`, `StreamDERPMaps` and `RefreshResumeToken` over it,
//! and redials with 50 ms–10 s backoff and the latest resume token whenever anything
//! breaks. Everything it learns goes to the session's owner task as [`Event`]s; the owner
//! sends coordination requests back through the sender each [`Event::Connected`] carries.

use std::time::{Duration, SystemTime};

use codervpn_proto::tailnet::{CoordinateResponse, DerpMap, WorkspaceUpdate};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use url::Url;

use super::coord_queue::{self, CoordSender};
use crate::session::rpc::{DialError, DialOptions, TailnetClient};

/// Smallest and largest redial delays.
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Refresh interval when the server gives none.
const DEFAULT_REFRESH: Duration = Duration::from_secs(30 * 60);
/// How long shutdown waits for the server to close the `Coordinate` stream after
/// `disconnect` (never longer: stop must not hang on the network).
const DISCONNECT_WAIT: Duration = Duration::from_millis(500);

/// What the controller reports to the session's owner.
#[derive(Debug)]
pub enum Event {
    /// A (re)connection is up; send coordination requests here (`update_self` and every
    /// `add_tunnel` again after each one).
    Connected {
        requests: CoordSender,
    },
    /// The connection broke; a redial follows.
    Disconnected {
        error: String,
    },
    /// `snapshot` is set for the first update of every (re)opened stream.
    Workspace {
        update: WorkspaceUpdate,
        snapshot: bool,
    },
    Coordinate(CoordinateResponse),
    DerpMap(DerpMap),
}

/// How the first dial ended.
pub type FirstDial = Result<(), String>;

/// The control plane as users see it (`codervpn status --json`, metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlStatus {
    /// The tailnet connection is up.
    pub connected: bool,
    /// When it last connected, or when it was lost (then redialling since).
    pub since: Option<SystemTime>,
    /// Connections after the first.
    pub redials: u64,
    /// Dial attempts that failed.
    pub failed_dials: u64,
    /// The latest dial error or reason the connection was lost (also what a `start` that
    /// gives up waiting reports).
    pub last_error: Option<String>,
}

/// Runs until `shutdown` turns true or the owner goes away.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    base: Url,
    mut opts: DialOptions,
    owner_id: [u8; 16],
    events: mpsc::Sender<Event>,
    first: oneshot::Sender<FirstDial>,
    status: watch::Sender<ControlStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut first = Some(first);
    let mut delay = MIN_BACKOFF;
    let mut token_expires: Option<SystemTime> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if token_expires.is_some_and(|t| t <= SystemTime::now()) {
            opts.resume_token = None;
            token_expires = None;
        }
        let dialled = tokio::select! {
            r = TailnetClient::dial(&base, &opts) => r,
            _ = shutdown.changed() => return,
        };
        let client = match dialled {
            Ok(c) => c,
            Err(e) if e.is_stale_resume_token() && opts.resume_token.is_some() => {
                info!("resume token refused; redialling without it");
                opts.resume_token = None;
                continue;
            }
            Err(e) => {
                if e.is_permanent()
                    && let Some(f) = first.take()
                {
                    let _ = f.send(Err(describe(&e)));
                    return;
                }
                warn!(error = %e, retry_in = ?delay, "tailnet dial failed");
                status.send_modify(|s| {
                    s.failed_dials += 1;
                    s.last_error = Some(e.to_string());
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
                delay = (delay * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if let Some(f) = first.take() {
            let _ = f.send(Ok(()));
        }
        delay = MIN_BACKOFF;
        status.send_modify(|s| {
            if s.since.is_some() {
                s.redials += 1;
            }
            s.connected = true;
            s.since = Some(SystemTime::now());
        });
        info!(resumed = opts.resume_token.is_some(), "tailnet connected");
        let ended = serve(
            &client,
            owner_id,
            &events,
            &mut opts,
            &mut token_expires,
            &mut shutdown,
        )
        .await;
        client.close().await;
        match ended {
            Ended::Shutdown => return,
            Ended::Broken(error) => {
                warn!(%error, "tailnet connection lost; redialling");
                status.send_modify(|s| {
                    s.connected = false;
                    s.since = Some(SystemTime::now());
                    s.last_error = Some(error.clone());
                });
                if events.send(Event::Disconnected { error }).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The message `start` fails with for a permanent dial error.
fn describe(e: &DialError) -> String {
    match e.status() {
        Some(401) => format!("the session token was rejected: {e}"),
        _ => e.to_string(),
    }
}

enum Ended {
    Shutdown,
    Broken(String),
}

async fn serve(
    client: &TailnetClient,
    owner_id: [u8; 16],
    events: &mpsc::Sender<Event>,
    opts: &mut DialOptions,
    token_expires: &mut Option<SystemTime>,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let coordinate = match client.coordinate().await {
        Ok(c) => c,
        Err(e) => return Ended::Broken(format!("opening Coordinate: {e}")),
    };
    let mut updates = match client.workspace_updates(&owner_id).await {
        Ok(u) => u,
        Err(e) => return Ended::Broken(format!("opening WorkspaceUpdates: {e}")),
    };
    let mut maps = match client.stream_derp_maps().await {
        Ok(m) => m,
        Err(e) => return Ended::Broken(format!("opening StreamDERPMaps: {e}")),
    };
    let (coord_tx, mut coord_resp) = coordinate.split();
    let (req_tx, mut req_rx) = coord_queue::channel();
    if events
        .send(Event::Connected { requests: req_tx })
        .await
        .is_err()
    {
        return Ended::Shutdown;
    }
    let mut refresh_at = tokio::time::Instant::now();
    let mut snapshot = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(refresh_at) => {
                match client.refresh_resume_token().await {
                    Ok(r) => {
                        let refresh_in = r
                            .refresh_in
                            .and_then(|d| u64::try_from(d.seconds).ok())
                            .filter(|s| *s > 0)
                            .map_or(DEFAULT_REFRESH, Duration::from_secs);
                        *token_expires = r.expires_at.and_then(|t| {
                            u64::try_from(t.seconds).ok().map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
                        });
                        opts.resume_token = Some(r.token).filter(|t| !t.is_empty());
                        refresh_at = tokio::time::Instant::now() + refresh_in;
                        debug!(?refresh_in, "resume token refreshed");
                    }
                    Err(e) => return Ended::Broken(format!("RefreshResumeToken: {e}")),
                }
            }
            req = req_rx.recv() => match req {
                Some(req) => {
                    let disconnect = req.disconnect.is_some();
                    if let Err(e) = coord_tx.send(&req).await {
                        return Ended::Broken(format!("sending to Coordinate: {e}"));
                    }
                    if disconnect {
                        let _ = tokio::time::timeout(DISCONNECT_WAIT, async {
                            while let Ok(Some(_)) = coord_resp.message().await {}
                        }).await;
                        return Ended::Shutdown;
                    }
                }
                None => return Ended::Shutdown,
            },
            resp = coord_resp.message() => match resp {
                Ok(Some(r)) => {
                    if !r.error.is_empty() {
                        warn!(error = %r.error, "coordinator reported an error");
                    }
                    if events.send(Event::Coordinate(r)).await.is_err() {
                        return Ended::Shutdown;
                    }
                }
                Ok(None) => return Ended::Broken("the coordinator closed the Coordinate stream".into()),
                Err(e) => return Ended::Broken(format!("Coordinate: {e}")),
            },
            u = updates.message() => match u {
                Ok(Some(update)) => {
                    let ev = Event::Workspace { update, snapshot };
                    snapshot = false;
                    if events.send(ev).await.is_err() {
                        return Ended::Shutdown;
                    }
                }
                Ok(None) => return Ended::Broken("the server closed the WorkspaceUpdates stream".into()),
                Err(e) => return Ended::Broken(format!("WorkspaceUpdates: {e}")),
            },
            m = maps.message() => match m {
                Ok(Some(map)) => {
                    if events.send(Event::DerpMap(map)).await.is_err() {
                        return Ended::Shutdown;
                    }
                }
                Ok(None) => return Ended::Broken("the server closed the StreamDERPMaps stream".into()),
                Err(e) => return Ended::Broken(format!("StreamDERPMaps: {e}")),
            },
            _ = shutdown.changed() => return Ended::Shutdown,
        }
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
