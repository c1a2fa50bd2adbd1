//! Running a task in another network namespace (`TestbedConfig::agent_netns`): a dedicated
//! OS thread enters the namespace (`setns(fd, CLONE_NEWNET)`, which moves only the calling
//! thread) and runs a current-thread tokio runtime there. Every socket the task opens and
//! every interface it lists (`getifaddrs`) then belongs to that namespace — a separate
//! host as far as the network is concerned — while channels to the rest of the testbed
//! work as before. Threads the runtime spawns (its blocking pool) inherit the namespace.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::warn;

/// How long dropping the handle waits for the thread to wind down.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Why the task could not be started in the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot enter network namespace {} (setns needs CAP_SYS_ADMIN): {source}",
        path.display()
    )]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a runtime in network namespace {}: {source}", path.display())]
    Runtime {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread for network namespace {} ended before it started", path.display())]
    Thread { path: PathBuf },
}

/// The thread running a task in a namespace. Dropping it stops the task (through the
/// `stop` sender the task was built with) and waits, boundedly, for the thread to end.
pub(crate) struct NetnsThread {
    stop: Option<oneshot::Sender<()>>,
    done: std_mpsc::Receiver<()>,
    join: Option<std::thread::JoinHandle<()>>,
}

/// Starts `make_task(stop)` on a new thread inside the network namespace at `path` (e.g.
/// `/run/netns/NAME`); returns once the thread is in the namespace with its runtime up.
pub(crate) async fn spawn<F, Fut>(path: &Path, make_task: F) -> Result<NetnsThread, NetnsError>
where
    F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), NetnsError>>();
    let (stop_tx, stop_rx) = oneshot::channel();
    let (done_tx, done_rx) = std_mpsc::channel();
    let owned = path.to_path_buf();
    let name = format!(
        "netns-{}",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let join = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let rt = match enter(&owned) {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            rt.block_on(make_task(stop_rx));
            rt.shutdown_timeout(Duration::from_secs(1));
            let _ = done_tx.send(());
        })
        .map_err(|source| NetnsError::Runtime {
            path: path.to_path_buf(),
            source,
        })?;
    match ready_rx.await {
        Ok(Ok(())) => Ok(NetnsThread {
            stop: Some(stop_tx),
            done: done_rx,
            join: Some(join),
        }),
        Ok(Err(e)) => {
            let _ = join.join();
            Err(e)
        }
        Err(_) => Err(NetnsError::Thread {
            path: path.to_path_buf(),
        }),
    }
}

/// Moves the calling thread into the namespace at `path` and builds its runtime.
fn enter(path: &Path) -> Result<tokio::runtime::Runtime, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    join(&file).map_err(|source| NetnsError::Enter {
        path: path.to_path_buf(),
        source,
    })?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetnsError::Runtime {
            path: path.to_path_buf(),
            source,
        })
}

impl Drop for NetnsThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.done.recv_timeout(STOP_WAIT) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(join) = self.join.take() {
                    let _ = join.join();
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                warn!("the agents' namespace thread did not stop in time; leaving it");
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn join(ns: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `ns` is an open descriptor for the duration of the call; setns only changes
    // the calling thread's namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Network namespaces are Linux's: elsewhere the agents run in the testbed's own network.
#[cfg(not(target_os = "linux"))]
fn join(_ns: &File) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "network namespaces exist on Linux only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_namespace_is_a_clear_error() {
        let path = Path::new("/run/netns/codervpn-testbed-does-not-exist");
        let Err(e) = spawn(path, |_stop| async {}).await else {
            panic!("entered a namespace that does not exist");
        };
        assert!(matches!(e, NetnsError::Open { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[tokio::test]
    async fn task_runs_in_the_namespace_and_stops_when_dropped() {
        // Our own namespace, named by a path that always exists: the mechanics, no root.
        let path = Path::new("/proc/self/ns/net");
        let (tx, rx) = oneshot::channel();
        let th = spawn(path, move |stop| async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
            let _ = stop.await;
        })
        .await;
        let th = match th {
            Ok(th) => th,
            // setns needs CAP_SYS_ADMIN even for our own namespace.
            Err(NetnsError::Enter { .. }) => return,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(rx.await.unwrap().as_deref(), Some("netns-net"));
        drop(th);
    }
}
