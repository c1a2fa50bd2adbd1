//! The status socket: who may connect, and streaming snapshots as JSON lines.

use super::*;

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
    #[error("{message}")]
    Answer { message: String },
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
    /// snapshot and then every change — until it sends a request line, which `requests`
    /// answers (no requests are taken without one).
    pub async fn serve(
        self,
        updates: watch::Receiver<Arc<StatusSnapshot>>,
        requests: Option<RequestHandler>,
    ) {
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
                    tokio::spawn(serve_client(
                        stream,
                        self.access,
                        updates.clone(),
                        requests.clone(),
                    ));
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
    requests: Option<RequestHandler>,
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
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES));
    let mut streaming = true;
    let mut buf = Vec::new();
    loop {
        if streaming {
            let snap = updates.borrow_and_update().clone();
            let Ok(line) = serde_json::to_string(&*snap) else {
                return;
            };
            if write_line(&mut write, &line).await.is_err() {
                return;
            }
        }
        let changed = async {
            if streaming {
                updates.changed().await.is_ok()
            } else {
                std::future::pending().await
            }
        };
        // `read_until` keeps what it read when the other branch wins; `buf` is cleared
        // only once a whole line was taken.
        tokio::select! {
            ok = changed => if !ok { return },
            r = read.read_until(b'\n', &mut buf) => {
                if matches!(r, Ok(0) | Err(_)) {
                    return;
                }
                streaming = false;
                let answer = match (&requests, serde_json::from_slice::<serde_json::Value>(&buf)) {
                    _ if !buf.ends_with(b"\n") => {
                        refuse(&mut write, "request line too long or not ended").await;
                        return;
                    }
                    (_, Err(e)) => error_answer(&format!("bad request line: {e}")),
                    (None, Ok(_)) => error_answer("this tunnel answers no requests"),
                    (Some(h), Ok(req)) => h(req).await,
                };
                buf.clear();
                if write_line(&mut write, &answer.to_string()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Answers requests sent on the status socket (`codervpn ping`, `metrics`, …): a JSON value
/// in, a JSON object with a `kind` out.
pub type RequestHandler = Arc<
    dyn Fn(serde_json::Value) -> codervpn_engine::host::BoxFuture<serde_json::Value> + Send + Sync,
>;

/// Bytes a client may send on one connection (requests are a line of JSON each).
const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// The answer to a request that could not be served.
pub fn error_answer(message: &str) -> serde_json::Value {
    serde_json::json!({ "kind": "error", "message": message })
}

async fn write_line(w: &mut tokio::net::unix::OwnedWriteHalf, line: &str) -> io::Result<()> {
    w.write_all(line.as_bytes()).await?;
    w.write_all(b"\n").await
}

async fn refuse(w: &mut tokio::net::unix::OwnedWriteHalf, message: &str) {
    let _ = write_line(w, &error_answer(message).to_string()).await;
    let _ = w.shutdown().await;
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
