//! The status surface: the tunnel state and peers built from `PeerUpdate`s
//! (manager-behaviour.md §6), a unix-socket server streaming it as JSON lines, and the
//! client and table used by `codervpn status`.
//!
//! Wire format: one JSON object per line. On connect the server sends the current
//! [`StatusSnapshot`], then one line per change (a slow reader skips to the newest). A
//! refused client gets one `{"error": "…"}` line and the socket is closed.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use codervpn_proto::vpn;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Default path of the status socket.
pub const DEFAULT_SOCKET: &str = "/run/codervpn/status.sock";
/// A handshake older than this is shown red (manager-behaviour.md §6.2).
pub const HANDSHAKE_STALE_AFTER: Duration = Duration::from_secs(5 * 60);
/// Ping latency from which an agent is shown yellow (§6.2: green below 150 ms).
pub const HIGH_LATENCY: Duration = Duration::from_millis(150);

// ---- model -------------------------------------------------------------------------------

/// The tunnel's lifecycle as users see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TunnelState {
    #[default]
    Stopped,
    Starting,
    Started,
    Stopping,
    Failed(String),
}

/// Workspaces and agents as the macOS app keeps them (manager-behaviour.md §6.1). Sans-IO.
#[derive(Clone, Debug, Default)]
pub struct PeerModel {
    workspaces: BTreeMap<[u8; 16], Workspace>,
    agents: BTreeMap<[u8; 16], vpn::Agent>,
    /// Agents without a known workspace, without FQDNs or with a bad UUID; re-linked when
    /// their workspace arrives.
    invalid_agents: Vec<vpn::Agent>,
}

#[derive(Clone, Debug)]
struct Workspace {
    name: String,
    status: i32,
}

/// One agent's status dot (§6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// A workspace row with no agents (grey).
    Off,
    /// No handshake yet.
    Connecting,
    /// Last handshake older than 5 minutes (red).
    NoRecentHandshake,
    /// Green.
    Okay,
    /// Latency ≥ 150 ms (yellow).
    HighLatency,
}

/// Everything `codervpn status` shows; one JSON line on the socket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// `stopped`, `starting`, `started`, `stopping` or `failed`.
    pub state: String,
    /// The failure, for `failed`.
    pub error: Option<String>,
    /// Workspaces sorted by name, then id.
    pub workspaces: Vec<WorkspaceView>,
    pub invalid_agents: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceView {
    pub id: String,
    /// Lower-cased.
    pub name: String,
    /// The workspace build status, lower-case (`running`, `stopped`, …).
    pub status: String,
    /// Sorted by name, then id.
    pub agents: Vec<AgentView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    /// The first FQDN without its trailing dot: the host users connect to.
    pub host: Option<String>,
    pub fqdns: Vec<String>,
    pub ip_addrs: Vec<String>,
    pub status: AgentStatus,
    /// Seconds since the last handshake when the snapshot was taken.
    pub handshake_age_secs: Option<u64>,
    pub latency_ms: Option<f64>,
    pub p2p: Option<bool>,
    pub derp_region: Option<String>,
    pub derp_latency_ms: Option<f64>,
}

impl TunnelState {
    fn name(&self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Started => "started",
            Self::Stopping => "stopping",
            Self::Failed(_) => "failed",
        }
    }
}

impl PeerModel {
    /// Applies one update in the app's order: deleted agents, deleted workspaces, upserted
    /// workspaces, upserted agents.
    pub fn apply(&mut self, update: &vpn::PeerUpdate) {
        for agent in &update.deleted_agents {
            self.delete_agent(&agent.id);
        }
        for ws in &update.deleted_workspaces {
            self.delete_workspace(&ws.id);
        }
        for ws in &update.upserted_workspaces {
            self.upsert_workspace(ws);
        }
        for agent in &update.upserted_agents {
            self.upsert_agent(agent.clone());
        }
    }

    /// Forgets everything (before re-applying a full `get_peer_update` reply, or on stop).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The view at `now` with tunnel state `state`.
    pub fn snapshot(&self, state: &TunnelState, now: SystemTime) -> StatusSnapshot {
        let mut workspaces: Vec<WorkspaceView> = self
            .workspaces
            .iter()
            .map(|(id, ws)| {
                let mut agents: Vec<AgentView> = self
                    .agents
                    .values()
                    .filter(|a| a.workspace_id == id)
                    .map(|a| agent_view(a, now))
                    .collect();
                agents.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
                WorkspaceView {
                    id: uuid_text(id),
                    name: ws.name.clone(),
                    status: workspace_status_name(ws.status),
                    agents,
                }
            })
            .collect();
        workspaces.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        StatusSnapshot {
            state: state.name().to_owned(),
            error: match state {
                TunnelState::Failed(e) => Some(e.clone()),
                TunnelState::Stopped
                | TunnelState::Starting
                | TunnelState::Started
                | TunnelState::Stopping => None,
            },
            workspaces,
            invalid_agents: self.invalid_agents.len(),
        }
    }

    fn delete_agent(&mut self, id: &[u8]) {
        if let Ok(id) = <[u8; 16]>::try_from(id) {
            self.agents.remove(&id);
        }
        self.invalid_agents.retain(|a| a.id != id);
    }

    fn delete_workspace(&mut self, id: &[u8]) {
        let Ok(id) = <[u8; 16]>::try_from(id) else {
            return;
        };
        self.agents.retain(|_, a| a.workspace_id != id);
        self.workspaces.remove(&id);
    }

    fn upsert_workspace(&mut self, ws: &vpn::Workspace) {
        let Ok(id) = <[u8; 16]>::try_from(ws.id.as_slice()) else {
            return;
        };
        self.workspaces.insert(
            id,
            Workspace {
                name: ws.name.to_lowercase(),
                status: ws.status,
            },
        );
        let (relink, keep) = std::mem::take(&mut self.invalid_agents)
            .into_iter()
            .partition(|a| a.workspace_id == ws.id);
        self.invalid_agents = keep;
        for agent in relink {
            self.upsert_agent(agent);
        }
    }

    fn upsert_agent(&mut self, agent: vpn::Agent) {
        let ids = <[u8; 16]>::try_from(agent.id.as_slice())
            .ok()
            .zip(<[u8; 16]>::try_from(agent.workspace_id.as_slice()).ok());
        let Some((id, ws)) = ids.filter(|(_, ws)| self.workspaces.contains_key(ws)) else {
            self.invalid_agents.push(agent);
            return;
        };
        if agent.fqdn.is_empty() {
            self.invalid_agents.push(agent);
            return;
        }
        // A new agent with the same name in the same workspace replaces the older one.
        self.agents
            .retain(|old, a| *old == id || !(a.name == agent.name && a.workspace_id == ws));
        self.agents.insert(id, agent);
    }
}

/// The status dot of an agent (§6.2), evaluated in the spec's order. `last_handshake` is
/// `None` when absent or the Go zero time (any time at or before the Unix epoch).
pub fn agent_status(
    last_handshake: Option<SystemTime>,
    latency: Option<Duration>,
    now: SystemTime,
) -> AgentStatus {
    let Some(handshake) = last_handshake else {
        return AgentStatus::Connecting;
    };
    if now.duration_since(handshake).unwrap_or_default() > HANDSHAKE_STALE_AFTER {
        return AgentStatus::NoRecentHandshake;
    }
    match latency {
        Some(l) if l >= HIGH_LATENCY => AgentStatus::HighLatency,
        Some(_) | None => AgentStatus::Okay,
    }
}

fn agent_view(a: &vpn::Agent, now: SystemTime) -> AgentView {
    let handshake = a
        .last_handshake
        .as_ref()
        .filter(|t| t.seconds > 0)
        .map(|t| {
            SystemTime::UNIX_EPOCH
                + Duration::new(
                    t.seconds.unsigned_abs(),
                    t.nanos.clamp(0, 999_999_999) as u32,
                )
        });
    let ping = a.last_ping.as_ref();
    let latency = ping.and_then(|p| p.latency.as_ref()).and_then(duration);
    let fqdns: Vec<String> = a
        .fqdn
        .iter()
        .map(|f| f.trim_end_matches('.').to_owned())
        .collect();
    AgentView {
        id: uuid_text(&a.id),
        name: a.name.clone(),
        host: fqdns.first().cloned(),
        fqdns,
        ip_addrs: a.ip_addrs.clone(),
        status: agent_status(handshake, latency, now),
        handshake_age_secs: handshake.map(|h| now.duration_since(h).unwrap_or_default().as_secs()),
        latency_ms: latency.map(|l| l.as_secs_f64() * 1000.0),
        p2p: ping.map(|p| p.did_p2p),
        derp_region: ping
            .map(|p| p.preferred_derp.clone())
            .filter(|r| !r.is_empty()),
        derp_latency_ms: ping
            .and_then(|p| p.preferred_derp_latency.as_ref())
            .and_then(duration)
            .map(|l| l.as_secs_f64() * 1000.0),
    }
}

fn duration(d: &prost_types::Duration) -> Option<Duration> {
    Duration::try_from(*d).ok()
}

fn uuid_text(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    if hex.len() != 32 {
        return hex;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn workspace_status_name(status: i32) -> String {
    vpn::workspace::Status::try_from(status)
        .map(|s| s.as_str_name().to_lowercase())
        .unwrap_or_else(|_| format!("status {status}"))
}

// ---- publisher ---------------------------------------------------------------------------

/// The single owner of the tunnel state and the peer model; publishes a new
/// [`StatusSnapshot`] to every subscriber when either changes.
pub struct StatusPublisher {
    state: TunnelState,
    model: PeerModel,
    tx: watch::Sender<Arc<StatusSnapshot>>,
}

impl StatusPublisher {
    pub fn new() -> Self {
        let state = TunnelState::default();
        let model = PeerModel::default();
        let (tx, _) = watch::channel(Arc::new(model.snapshot(&state, SystemTime::now())));
        Self { state, model, tx }
    }

    /// A receiver for [`StatusServer::serve`] or anything else that watches.
    pub fn subscribe(&self) -> watch::Receiver<Arc<StatusSnapshot>> {
        self.tx.subscribe()
    }

    pub fn set_state(&mut self, state: TunnelState, now: SystemTime) {
        self.state = state;
        self.publish(now);
    }

    pub fn peer_update(&mut self, update: &vpn::PeerUpdate, now: SystemTime) {
        self.model.apply(update);
        self.publish(now);
    }

    /// Clears the peers (on stop, or before applying a full `get_peer_update` reply).
    pub fn clear_peers(&mut self, now: SystemTime) {
        self.model.clear();
        self.publish(now);
    }

    fn publish(&self, now: SystemTime) {
        let snap = self.model.snapshot(&self.state, now);
        self.tx.send_if_modified(|cur| {
            if **cur == snap {
                return false;
            }
            *cur = Arc::new(snap);
            true
        });
    }
}

impl Default for StatusPublisher {
    fn default() -> Self {
        Self::new()
    }
}

// ---- server ------------------------------------------------------------------------------

/// The listening status socket. The socket file (mode 0660, owned by this process's uid and
/// the configured group) is removed on drop.
pub struct StatusServer {
    listener: UnixListener,
    path: PathBuf,
    access: Access,
}

/// Who may read the status: root, the socket's owner, and members of `group`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub owner_uid: u32,
    pub group: Option<u32>,
}

/// A status-socket failure; names the path.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status socket {path}: {what}: {source}")]
    Socket {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("group {name:?} not found")]
    NoSuchGroup { name: String },
    #[error("status socket {path}: refused: {message}")]
    Refused { path: PathBuf, message: String },
    #[error("status socket {path}: bad status line: {source}")]
    BadLine {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("status socket {path}: closed before sending a status")]
    Closed { path: PathBuf },
}

impl StatusServer {
    /// Listens at `path` (a stale socket there is replaced; the parent directory is created
    /// with mode 0755), mode 0660, group `group` when given.
    pub fn bind(path: &Path, group: Option<u32>) -> Result<Self, StatusError> {
        let err = |what| {
            move |source| StatusError::Socket {
                path: path.to_owned(),
                what,
                source,
            }
        };
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::create_dir_all(dir).map_err(err("creating its directory"))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(err("setting its directory's mode"))?;
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("checking for another server")(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is serving status on it",
            )));
        }
        match std::fs::remove_file(path) {
            Ok(()) => debug!(path = %path.display(), "removed a stale status socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("removing the stale socket")(e)),
        }
        let listener = UnixListener::bind(path).map_err(err("binding"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(err("setting mode 0660"))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(err("setting its group"))?;
        }
        // SAFETY: geteuid has no preconditions.
        let owner_uid = unsafe { libc::geteuid() };
        Ok(Self {
            listener,
            path: path.to_owned(),
            access: Access { owner_uid, group },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn access(&self) -> Access {
        self.access
    }

    /// Accepts clients until the publisher is dropped; each allowed client gets the current
    /// snapshot and then every change.
    pub async fn serve(self, updates: watch::Receiver<Arc<StatusSnapshot>>) {
        let mut watcher = updates.clone();
        let closed = async move { while watcher.changed().await.is_ok() {} };
        tokio::pin!(closed);
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                () = &mut closed => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_client(stream, self.access, updates.clone()));
                }
                Err(e) => {
                    warn!(path = %self.path.display(), error = %e, "status socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a peer with these credentials may read the status.
pub fn allowed(access: Access, uid: u32, gid: u32, groups: &[u32]) -> bool {
    uid == 0
        || uid == access.owner_uid
        || access
            .group
            .is_some_and(|g| gid == g || groups.contains(&g))
}

/// The gid of group `name` (or `name` itself when numeric).
pub fn resolve_group(name: &str) -> Result<u32, StatusError> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let missing = || StatusError::NoSuchGroup {
        name: name.to_owned(),
    };
    let cname = CString::new(name).map_err(|_| missing())?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: a zeroed `group` is a valid out-parameter.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(missing());
    }
    Ok(grp.gr_gid)
}

async fn serve_client(
    mut stream: UnixStream,
    access: Access,
    mut updates: watch::Receiver<Arc<StatusSnapshot>>,
) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "status client: cannot read its credentials");
            return;
        }
    };
    let (uid, gid) = (cred.uid(), cred.gid());
    let groups = peer_groups(&stream).unwrap_or_default();
    if !allowed(access, uid, gid, &groups) {
        info!(uid, gid, pid = ?cred.pid(), "status client refused");
        let message = format!(
            "permission denied: uid {uid} is not root, not uid {}{}",
            access.owner_uid,
            access
                .group
                .map(|g| format!(" and not in group {g}"))
                .unwrap_or_default()
        );
        let line = serde_json::json!({ "error": message }).to_string() + "\n";
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    }
    debug!(uid, pid = ?cred.pid(), "status client connected");
    loop {
        let snap = updates.borrow_and_update().clone();
        let Ok(mut line) = serde_json::to_string(&*snap) else {
            return;
        };
        line.push('\n');
        if stream.write_all(line.as_bytes()).await.is_err() {
            return;
        }
        if updates.changed().await.is_err() {
            return;
        }
    }
}

/// `SO_PEERGROUPS` (not in every libc release; 59 on the common Linux architectures).
#[cfg(not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64")))]
const SO_PEERGROUPS: libc::c_int = 59;

/// The peer's supplementary groups at connect time.
fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: `groups` is writable for `len` bytes; the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<u32>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: the kernel set `len` to the size it needs.
        if e.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(e);
        }
        groups.resize(needed, 0);
    }
}

// ---- client ------------------------------------------------------------------------------

/// Connects to the status socket at `path` and returns the first snapshot (blocking, with
/// a 5 s timeout).
pub fn fetch_status(path: &Path) -> Result<StatusSnapshot, StatusError> {
    let io_err = |what| {
        move |source| StatusError::Socket {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(io_err("connecting"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err("setting a read timeout"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(io_err("reading"))?;
    parse_line(path, &line)
}

/// One line from the status socket: a snapshot, or the server's refusal as an error.
pub fn parse_line(path: &Path, line: &str) -> Result<StatusSnapshot, StatusError> {
    if line.trim().is_empty() {
        return Err(StatusError::Closed {
            path: path.to_owned(),
        });
    }
    let snapshot = serde_json::from_str(line).map_err(|source| StatusError::BadLine {
        path: path.to_owned(),
        source,
    });
    // A refusal is `{"error": "…"}` alone; a snapshot always has `state` and the rest.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Refusal {
        error: String,
    }
    match serde_json::from_str::<Refusal>(line) {
        Ok(Refusal { error }) => Err(StatusError::Refused {
            path: path.to_owned(),
            message: error,
        }),
        Err(_) => snapshot,
    }
}

/// The table `codervpn status` prints.
pub fn format_table(s: &StatusSnapshot) -> String {
    let mut out = match &s.error {
        Some(e) => format!("Coder Connect: {} ({e})\n", s.state),
        None => format!("Coder Connect: {}\n", s.state),
    };
    if s.workspaces.is_empty() {
        out.push_str("No workspaces.\n");
    } else {
        let header = [
            "WORKSPACE",
            "AGENT",
            "STATUS",
            "LATENCY",
            "PATH",
            "HANDSHAKE",
            "HOST",
        ];
        let mut rows: Vec<[String; 7]> = vec![header.map(str::to_owned)];
        for ws in &s.workspaces {
            if ws.agents.is_empty() {
                rows.push([
                    ws.name.clone(),
                    "-".into(),
                    status_text(AgentStatus::Off).into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("({})", ws.status),
                ]);
            }
            for a in &ws.agents {
                rows.push([
                    ws.name.clone(),
                    a.name.clone(),
                    status_text(a.status).into(),
                    a.latency_ms
                        .map(|l| format!("{l:.0} ms"))
                        .unwrap_or_else(|| "-".into()),
                    path_text(a),
                    a.handshake_age_secs
                        .map(age_text)
                        .unwrap_or_else(|| "never".into()),
                    a.host.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
        }
        let mut widths = [0usize; 7];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  "));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    if s.invalid_agents > 0 {
        out.push_str(&format!(
            "{} invalid agent(s) (unknown workspace, no FQDN or bad id) not shown.\n",
            s.invalid_agents
        ));
    }
    out
}

fn status_text(s: AgentStatus) -> &'static str {
    match s {
        AgentStatus::Off => "off",
        AgentStatus::Connecting => "connecting",
        AgentStatus::NoRecentHandshake => "no recent handshake",
        AgentStatus::Okay => "okay",
        AgentStatus::HighLatency => "high latency",
    }
}

fn path_text(a: &AgentView) -> String {
    match (a.p2p, &a.derp_region) {
        (None, _) => "-".into(),
        (Some(true), _) => "p2p".into(),
        (Some(false), Some(region)) => format!("DERP {region}"),
        (Some(false), None) => "DERP".into(),
    }
}

fn age_text(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const WS: [u8; 16] = [1; 16];
    const A1: [u8; 16] = [0xa1; 16];
    const A2: [u8; 16] = [0xa2; 16];

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn ts(t: SystemTime) -> prost_types::Timestamp {
        t.into()
    }

    fn workspace(id: [u8; 16], name: &str) -> vpn::Workspace {
        vpn::Workspace {
            id: id.to_vec(),
            name: name.into(),
            status: vpn::workspace::Status::Running as i32,
        }
    }

    fn agent(id: [u8; 16], name: &str, ws: [u8; 16]) -> vpn::Agent {
        vpn::Agent {
            id: id.to_vec(),
            name: name.into(),
            workspace_id: ws.to_vec(),
            fqdn: vec![format!("{name}.w1.coder."), format!("{name}.w1.me.coder.")],
            ip_addrs: vec!["fd60:627a:a42b::1".into()],
            last_handshake: Some(ts(now() - Duration::from_secs(10))),
            last_ping: None,
        }
    }

    fn upsert(ws: Vec<vpn::Workspace>, agents: Vec<vpn::Agent>) -> vpn::PeerUpdate {
        vpn::PeerUpdate {
            upserted_workspaces: ws,
            upserted_agents: agents,
            ..Default::default()
        }
    }

    fn snap(m: &PeerModel) -> StatusSnapshot {
        m.snapshot(&TunnelState::Started, now())
    }

    #[test]
    fn workspace_and_agent_in_one_update_are_linked() {
        let mut m = PeerModel::default();
        m.apply(&upsert(
            vec![workspace(WS, "W1")],
            vec![agent(A1, "main", WS)],
        ));
        let s = snap(&m);
        assert_eq!(
            s.workspaces[0].name, "w1",
            "workspace names are lower-cased"
        );
        assert_eq!(
            s.workspaces[0].agents[0].host.as_deref(),
            Some("main.w1.coder")
        );
        assert_eq!(s.invalid_agents, 0);
    }

    #[test]
    fn agent_before_its_workspace_is_kept_aside_then_relinked() {
        let mut m = PeerModel::default();
        m.apply(&upsert(vec![], vec![agent(A1, "main", WS)]));
        assert_eq!(snap(&m).invalid_agents, 1);
        m.apply(&upsert(vec![workspace(WS, "w1")], vec![]));
        let s = snap(&m);
        assert_eq!(s.invalid_agents, 0);
        assert_eq!(s.workspaces[0].agents.len(), 1);
    }

    #[test]
    fn agent_without_fqdn_is_invalid() {
        let mut m = PeerModel::default();
        let mut a = agent(A1, "main", WS);
        a.fqdn.clear();
        m.apply(&upsert(vec![workspace(WS, "w1")], vec![a]));
        assert_eq!(snap(&m).invalid_agents, 1);
        assert!(snap(&m).workspaces[0].agents.is_empty());
    }

    #[test]
    fn agent_with_bad_uuid_is_invalid() {
        let mut m = PeerModel::default();
        let mut a = agent(A1, "main", WS);
        a.id = vec![1, 2];
        m.apply(&upsert(vec![workspace(WS, "w1")], vec![a]));
        assert_eq!(snap(&m).invalid_agents, 1);
    }

    #[test]
    fn new_agent_with_same_name_replaces_older_one() {
        let mut m = PeerModel::default();
        m.apply(&upsert(
            vec![workspace(WS, "w1")],
            vec![agent(A1, "main", WS)],
        ));
        m.apply(&upsert(vec![], vec![agent(A2, "main", WS)]));
        let agents = &snap(&m).workspaces[0].agents;
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].id, uuid_text(&A2));
    }

    #[test]
    fn deleted_workspace_takes_its_agents() {
        let mut m = PeerModel::default();
        m.apply(&upsert(
            vec![workspace(WS, "w1")],
            vec![agent(A1, "main", WS)],
        ));
        m.apply(&vpn::PeerUpdate {
            deleted_workspaces: vec![workspace(WS, "w1")],
            ..Default::default()
        });
        assert!(snap(&m).workspaces.is_empty());
        m.apply(&upsert(vec![workspace(WS, "w1")], vec![]));
        assert!(snap(&m).workspaces[0].agents.is_empty());
    }

    #[test]
    fn deletions_apply_before_upserts() {
        let mut m = PeerModel::default();
        m.apply(&upsert(
            vec![workspace(WS, "w1")],
            vec![agent(A1, "main", WS)],
        ));
        m.apply(&vpn::PeerUpdate {
            deleted_agents: vec![agent(A1, "main", WS)],
            upserted_agents: vec![agent(A1, "main", WS)],
            ..Default::default()
        });
        assert_eq!(snap(&m).workspaces[0].agents.len(), 1);
    }

    #[test]
    fn deleted_agent_leaves_invalid_list() {
        let mut m = PeerModel::default();
        m.apply(&upsert(vec![], vec![agent(A1, "main", WS)]));
        m.apply(&vpn::PeerUpdate {
            deleted_agents: vec![agent(A1, "main", WS)],
            ..Default::default()
        });
        assert_eq!(snap(&m).invalid_agents, 0);
    }

    #[test]
    fn status_connecting_without_handshake() {
        assert_eq!(agent_status(None, None, now()), AgentStatus::Connecting);
    }

    #[test]
    fn go_zero_time_handshake_is_connecting() {
        let mut m = PeerModel::default();
        let mut a = agent(A1, "main", WS);
        a.last_handshake = Some(prost_types::Timestamp {
            seconds: -62_135_596_800,
            nanos: 0,
        });
        m.apply(&upsert(vec![workspace(WS, "w1")], vec![a]));
        assert_eq!(
            snap(&m).workspaces[0].agents[0].status,
            AgentStatus::Connecting
        );
    }

    #[test]
    fn status_red_after_five_minutes_without_handshake() {
        let hs = now() - Duration::from_secs(301);
        assert_eq!(
            agent_status(Some(hs), Some(Duration::from_millis(5)), now()),
            AgentStatus::NoRecentHandshake
        );
        let hs = now() - Duration::from_secs(300);
        assert_eq!(agent_status(Some(hs), None, now()), AgentStatus::Okay);
    }

    #[test]
    fn status_green_without_ping_data() {
        assert_eq!(agent_status(Some(now()), None, now()), AgentStatus::Okay);
    }

    #[test]
    fn status_green_below_150ms_yellow_from_150ms() {
        let hs = Some(now());
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(agent_status(hs, ms(149), now()), AgentStatus::Okay);
        assert_eq!(agent_status(hs, ms(150), now()), AgentStatus::HighLatency);
    }

    #[test]
    fn publisher_publishes_only_changes() {
        let mut p = StatusPublisher::new();
        let mut rx = p.subscribe();
        rx.borrow_and_update();
        p.set_state(TunnelState::Stopped, now());
        assert!(!rx.has_changed().unwrap());
        p.set_state(TunnelState::Started, now());
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().state, "started");
    }

    #[test]
    fn access_allows_root_owner_and_group_members_only() {
        let access = Access {
            owner_uid: 0,
            group: Some(1000),
        };
        assert!(allowed(access, 0, 0, &[]));
        assert!(allowed(access, 1001, 1000, &[]));
        assert!(allowed(access, 1001, 1001, &[27, 1000]));
        assert!(!allowed(access, 65534, 65534, &[]));
        let no_group = Access {
            owner_uid: 500,
            group: None,
        };
        assert!(allowed(no_group, 500, 500, &[]));
        assert!(!allowed(no_group, 501, 0, &[0]));
    }

    fn table_snapshot() -> StatusSnapshot {
        let mut m = PeerModel::default();
        let mut fast = agent(A1, "main", WS);
        fast.last_ping = Some(vpn::LastPing {
            latency: Some(Duration::from_millis(12).try_into().unwrap()),
            did_p2p: true,
            preferred_derp: "New York".into(),
            preferred_derp_latency: None,
        });
        let mut slow = agent(A2, "gpu", WS);
        slow.last_ping = Some(vpn::LastPing {
            latency: Some(Duration::from_millis(212).try_into().unwrap()),
            did_p2p: false,
            preferred_derp: "Frankfurt".into(),
            preferred_derp_latency: None,
        });
        m.apply(&upsert(
            vec![workspace(WS, "w1"), workspace([2; 16], "idle")],
            vec![fast, slow],
        ));
        m.snapshot(&TunnelState::Started, now())
    }

    #[test]
    fn table_lists_agents_with_status_latency_and_path() {
        let table = format_table(&table_snapshot());
        let want = "\
Coder Connect: started
WORKSPACE  AGENT  STATUS        LATENCY  PATH            HANDSHAKE  HOST
idle       -      off           -        -               -          (running)
w1         gpu    high latency  212 ms   DERP Frankfurt  10s ago    gpu.w1.coder
w1         main   okay          12 ms    p2p             10s ago    main.w1.coder
";
        assert_eq!(table, want);
    }

    #[test]
    fn table_shows_failure_and_empty_state() {
        let s = PeerModel::default().snapshot(&TunnelState::Failed("boom".into()), now());
        assert_eq!(
            format_table(&s),
            "Coder Connect: failed (boom)\nNo workspaces.\n"
        );
    }

    #[test]
    fn table_counts_invalid_agents() {
        let mut m = PeerModel::default();
        m.apply(&upsert(vec![], vec![agent(A1, "main", WS)]));
        let t = format_table(&m.snapshot(&TunnelState::Started, now()));
        assert!(
            t.ends_with("1 invalid agent(s) (unknown workspace, no FQDN or bad id) not shown.\n"),
            "{t}"
        );
    }

    #[test]
    fn snapshot_round_trips_through_a_json_line() {
        let s = table_snapshot();
        let line = serde_json::to_string(&s).unwrap();
        assert_eq!(parse_line(Path::new("x"), &line).unwrap(), s);
    }

    #[test]
    fn refusal_line_becomes_refused_error() {
        let err = parse_line(Path::new("/s"), "{\"error\":\"permission denied\"}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "status socket /s: refused: permission denied"
        );
    }
}
