//! Starting a compat tunnel once its artifact is verified: the library through
//! `OpenTunnel` (dylib mode), or the binary as `vpn-daemon run` on two pipes (daemon
//! mode, dylib-abi-and-compat.md §2). Either way the result is a handshaken manager-side
//! connection, the same as the embedded mode's.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use codervpn_proto::fd::{FdReader, FdWriter};
use codervpn_proto::{Connection, ManagerSide, VersionList};

use super::{CompatLibrary, Executable, VerifiedArtifact};

/// What keeps a compat tunnel alive: the loaded library, or the daemon process.
pub enum CompatHost {
    Library(Arc<CompatLibrary>),
    Daemon(Child),
}

impl CompatHost {
    /// After `stop` and hang-up: waits (bounded) for a daemon to exit, then asks it to
    /// with SIGTERM and waits as long again — Coder's daemon runs until signalled, and
    /// only then takes down the interface and DNS it configured — and kills it last.
    pub fn finish(self, wait: Duration) {
        let CompatHost::Daemon(mut child) = self else {
            return;
        };
        if wait_exit(&mut child, wait) {
            return;
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if wait_exit(&mut child, wait) {
            return;
        }
        tracing::warn!("the compat daemon did not exit on SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn wait_exit(child: &mut Child, wait: Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Why a verified artifact could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Load(#[from] super::LoadError),
    #[error(transparent)]
    Open(#[from] super::OpenTunnelError),
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CoderVPN handshake with {what} failed: {reason}")]
    Handshake { what: String, reason: String },
    #[error(
        "version check failed: cannot read the version of {what} (`version --output=json`): {reason}"
    )]
    VersionUnreadable { what: String, reason: String },
    #[error(
        "version check failed: {what} is Coder {binary:?} but the server runs {server:?}; a CLI must match its server exactly (as Coder Desktop requires)"
    )]
    VersionMismatch {
        what: String,
        binary: String,
        server: String,
    },
}

/// How long `<cli> version --output=json` may take.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of its output read.
const MAX_VERSION_OUTPUT: u64 = 64 * 1024;

/// `argv[0]` of the CLI we run.
const CLI_ARGV0: &str = "coder";

/// Runs the (verified) CLI `exe` as `coder version --output=json` and requires its
/// `version` to equal `server` exactly, as Coder Desktop for macOS does
/// (`Validator.validateVersion`) before it runs a downloaded CLI as its daemon. A CLI that
/// hangs is killed after `timeout`.
pub fn check_cli_version(
    exe: &Executable,
    server: &str,
    timeout: Duration,
) -> Result<(), LaunchError> {
    use std::io::Read;
    let shown = exe.describe();
    let unreadable = |reason: String| LaunchError::VersionUnreadable {
        what: shown.clone(),
        reason,
    };
    let mut child = exe
        .command(CLI_ARGV0)
        .args(["version", "--output=json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| unreadable(e.to_string()))?;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout {
            let _ = s.take(MAX_VERSION_OUTPUT).read_to_end(&mut out);
        }
        out
    });
    if !wait_exit(&mut child, timeout) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(unreadable(format!("no answer within {timeout:?}; killed")));
    }
    let status = child.wait().map_err(|e| unreadable(e.to_string()))?;
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(unreadable(format!("it exited with {status}")));
    }
    #[derive(serde::Deserialize)]
    struct VersionOutput {
        version: String,
    }
    let parsed: VersionOutput = serde_json::from_slice(&out).map_err(|e| {
        let head = String::from_utf8_lossy(&out[..out.len().min(80)]).into_owned();
        unreadable(format!("not the JSON expected ({e}): {head:?}"))
    })?;
    if parsed.version != server {
        return Err(LaunchError::VersionMismatch {
            what: shown,
            binary: parsed.version,
            server: server.to_owned(),
        });
    }
    tracing::info!(cli = %shown, version = %parsed.version, "the CLI's version is the server's");
    Ok(())
}

/// `dlopen`s the verified bytes and opens a tunnel on them.
pub async fn open_library(
    artifact: &VerifiedArtifact,
    handshake_timeout: Duration,
) -> Result<(Connection<ManagerSide>, CompatHost), LaunchError> {
    let lib = artifact.load_library()?;
    let tunnel = lib.open_tunnel(handshake_timeout).await?;
    let (conn, lib) = tunnel.into_parts();
    Ok((conn, CompatHost::Library(lib)))
}

/// A pipe, both ends close-on-exec (std sets it atomically where the OS can).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = std::io::pipe()?;
    Ok((read.into(), write.into()))
}

/// The pipe flags of Coder's `vpn-daemon run`: `--rpc-read-fd` on macOS
/// (`cli/vpndaemon_darwin.go`), `--rpc-read-handle` on Linux and Windows
/// (`cli/vpndaemon_windows_linux_shared.go`, coder v2.36.1). Ours takes both.
#[cfg(target_os = "macos")]
const DAEMON_READ_FLAG: &str = "--rpc-read-fd";
#[cfg(target_os = "macos")]
const DAEMON_WRITE_FLAG: &str = "--rpc-write-fd";
#[cfg(not(target_os = "macos"))]
const DAEMON_READ_FLAG: &str = "--rpc-read-handle";
#[cfg(not(target_os = "macos"))]
const DAEMON_WRITE_FLAG: &str = "--rpc-write-handle";

/// Runs the verified binary as `coder vpn-daemon run` with the two pipe descriptors;
/// `inherit` lists further descriptors the child must keep (the TUN). The version check and
/// the daemon both run the verified bytes from one sealed memfd on Linux (see
/// [`Executable`]); nothing executable is written to disk there.
pub async fn spawn_daemon(
    artifact: &VerifiedArtifact,
    inherit: &[RawFd],
    envs: &[(String, String)],
    handshake_timeout: Duration,
) -> Result<(Connection<ManagerSide>, CompatHost), LaunchError> {
    let exe = artifact.executable().map_err(|source| LaunchError::Spawn {
        what: artifact.file.clone(),
        source,
    })?;
    let shown = exe.describe();
    let spawn_err = |source| LaunchError::Spawn {
        what: shown.clone(),
        source,
    };
    // Only verified bytes get here (signature first); the version check runs them once.
    let expected = artifact.server_version.raw.clone();
    let (exe, checked) = tokio::task::spawn_blocking(move || {
        let checked = check_cli_version(&exe, &expected, VERSION_TIMEOUT);
        (exe, checked)
    })
    .await
    .map_err(|e| LaunchError::VersionUnreadable {
        what: shown.clone(),
        reason: e.to_string(),
    })?;
    checked?;
    let (m2t_r, m2t_w) = pipe().map_err(spawn_err)?;
    let (t2m_r, t2m_w) = pipe().map_err(spawn_err)?;
    let keep: Vec<RawFd> = [m2t_r.as_raw_fd(), t2m_w.as_raw_fd()]
        .into_iter()
        .chain(inherit.iter().copied())
        .collect();
    let mut cmd = exe.command(CLI_ARGV0);
    cmd.args(["vpn-daemon", "run", DAEMON_READ_FLAG])
        .arg(m2t_r.as_raw_fd().to_string())
        .arg(DAEMON_WRITE_FLAG)
        .arg(t2m_w.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .envs(envs.iter().map(|(k, v)| (k, v)));
    // SAFETY: only async-signal-safe fcntl calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            for fd in &keep {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // The child runs the new program now: our memfd (or copy) is no longer needed.
    drop(exe);
    drop(m2t_r);
    drop(t2m_w);
    // A child that cannot be talked to is killed and reaped, never left running.
    let mut fail = |e: LaunchError| {
        let _ = child.kill();
        let _ = child.wait();
        e
    };
    let reader = FdReader::new(t2m_r).map_err(|e| fail(spawn_err(e)))?;
    let writer = FdWriter::new(m2t_w).map_err(|e| fail(spawn_err(e)))?;
    let handshake = Connection::<ManagerSide>::handshake(reader, writer, VersionList::current());
    let conn = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(fail(LaunchError::Handshake {
                what: shown,
                reason: e.to_string(),
            }));
        }
        Err(_) => {
            return Err(fail(LaunchError::Handshake {
                what: shown,
                reason: format!("no answer within {handshake_timeout:?}"),
            }));
        }
    };
    Ok((conn, CompatHost::Daemon(child)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compat::{ArtifactKind, SemVer, ServerVersion};
    use std::path::Path;

    const SHA1: &str = "0123456789abcdef0123456789abcdef01234567";

    /// A daemon artifact (a script) that appends where it runs from to `records/runs` — its
    /// `$0` and what that descriptor of its links to — then answers the version check, or
    /// records its pid in `records/pid` and hangs without a handshake.
    fn hanging_daemon(records: &Path, cache: &Path) -> VerifiedArtifact {
        let r = records.display();
        let script = format!(
            "#!/bin/sh\n\
             echo \"$0 $(readlink \"/proc/$$/fd/${{0##*/}}\" 2>/dev/null)\" >> {r}/runs\n\
             [ \"$1\" = version ] && {{ echo '{{\"version\":\"v2.36.1\"}}'; exit 0; }}\n\
             echo $$ > {r}/pid\n\
             exec sleep 60\n"
        );
        VerifiedArtifact {
            kind: ArtifactKind::Daemon,
            file: "coder-linux-amd64".into(),
            url: url::Url::parse("http://127.0.0.1/bin/coder-linux-amd64").unwrap(),
            server_version: ServerVersion {
                raw: "v2.36.1".into(),
                semver: SemVer {
                    major: 2,
                    minor: 36,
                    patch: 1,
                },
            },
            sha1: SHA1.into(),
            signature_checked: false,
            from_cache: false,
            bytes: script.into_bytes(),
            staging_dir: cache.to_path_buf(),
        }
    }

    fn dirs() -> (tempfile::TempDir, tempfile::TempDir) {
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap())
    }

    #[tokio::test]
    async fn a_daemon_that_does_not_handshake_is_killed_not_left_running() {
        let (records, cache) = dirs();
        let artifact = hanging_daemon(records.path(), cache.path());
        let Err(err) = spawn_daemon(&artifact, &[], &[], Duration::from_millis(500)).await else {
            panic!("a daemon that never answers was taken as started");
        };
        assert!(matches!(err, LaunchError::Handshake { .. }), "{err}");
        let pid: i32 = std::fs::read_to_string(records.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "the daemon {pid} is still running");
    }

    /// Issue #17: the version check and the daemon both run the verified bytes from a
    /// sealed memfd (`/proc/self/fd/<N>` naming `/memfd:codervpn-compat-…`), and the cache
    /// directory holds nothing afterwards (no staged executable copy).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_version_check_and_the_daemon_run_from_a_memfd_and_leave_no_file() {
        let (records, cache) = dirs();
        let artifact = hanging_daemon(records.path(), cache.path());
        let Err(err) = spawn_daemon(&artifact, &[], &[], Duration::from_millis(500)).await else {
            panic!("a daemon that never answers was taken as started");
        };
        assert!(matches!(err, LaunchError::Handshake { .. }), "{err}");

        let runs = std::fs::read_to_string(records.path().join("runs")).unwrap();
        let lines: Vec<&str> = runs.lines().collect();
        assert_eq!(lines.len(), 2, "{runs}");
        for line in lines {
            let (arg0, target) = line.split_once(' ').unwrap();
            assert!(arg0.starts_with("/proc/self/fd/"), "{runs}");
            assert_eq!(
                target, "/memfd:codervpn-compat-0123456789ab-coder-linux-amd64 (deleted)",
                "{runs}"
            );
        }
        let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// A version check that fails leaves nothing behind either, and names the artifact.
    #[tokio::test]
    async fn a_refused_version_names_the_artifact_and_leaves_no_file() {
        let (records, cache) = dirs();
        let mut artifact = hanging_daemon(records.path(), cache.path());
        artifact.server_version.raw = "v2.36.2".into();
        let Err(err) = spawn_daemon(&artifact, &[], &[], Duration::from_millis(500)).await else {
            panic!("a CLI of another version was run");
        };
        let want = if cfg!(target_os = "linux") {
            "version check failed: coder-linux-amd64 (sealed memfd) is Coder \"v2.36.1\""
        } else {
            "version check failed: "
        };
        assert!(err.to_string().starts_with(want), "{err}");
        assert!(
            !records.path().join("pid").exists(),
            "the daemon was started"
        );
        let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
