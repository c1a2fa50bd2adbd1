//! Loading verified bytes and opening a tunnel through their `OpenTunnel` export
//! (dylib-abi-and-compat.md §1).
//!
//! The bytes that passed verification are the bytes loaded: on Linux they are copied into a
//! sealed `memfd` and `dlopen`ed through `/proc/self/fd/N`; elsewhere (or when `memfd_create`
//! is unavailable) into a fresh mode-0500 file created exclusively in the private cache
//! directory, which is unlinked once loaded. Nothing re-reads the downloaded file.
//!
//! A loaded library is never unloaded, and the same bytes (by SHA-1) are loaded once per
//! process: Coder's Go library is a c-shared Go runtime, which cannot be `dlclose`d and must
//! not be loaded twice; ours pins itself anyway. The memfd stays open for the same reason:
//! glibc recognises an already-loaded object by its path, so `/proc/self/fd/N` must never
//! name a different file while the library is loaded.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use codervpn_proto::fd::{FdReader, FdWriter};
use codervpn_proto::{Connection, ManagerSide, VersionList};
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use tracing::{debug, warn};

use super::sealed::{memfd, memfd_name, private_copy};

/// `int32_t OpenTunnel(int32_t readFD, int32_t writeFD)`.
type OpenTunnelFn = unsafe extern "C" fn(i32, i32) -> i32;

/// How long to wait for `OpenTunnel` to return once our ends are closed after a failed
/// handshake.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// Why a verified library could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file} is not a tunnel library (it is the {what}); run it instead of loading it")]
    NotALibrary { file: String, what: &'static str },
    #[error("cannot stage {file} for loading: {source}")]
    Stage {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file} refused by its code signature: {source}")]
    Codesign {
        file: String,
        #[source]
        source: codervpn_codesign::CodesignError,
    },
    #[error("dlopen of {file} failed: {detail}")]
    Dlopen { file: String, detail: String },
    #[error("{file} does not export OpenTunnel: {detail}")]
    NoOpenTunnel { file: String, detail: String },
}

/// Why `OpenTunnel` did not give us a connection.
#[derive(Debug, thiserror::Error)]
pub enum OpenTunnelError {
    #[error("cannot create the pipes for {file}: {source}")]
    Pipes {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("OpenTunnel in {file} returned {code} ({meaning})")]
    Failed {
        file: String,
        code: i32,
        meaning: &'static str,
    },
    #[error("CoderVPN handshake with {file} failed: {detail}")]
    Handshake { file: String, detail: String },
}

/// A loaded tunnel library. It stays loaded for the life of the process (see the module
/// documentation); every [`CompatTunnel`] also holds a reference.
pub struct CompatLibrary {
    file: String,
    open_tunnel: OpenTunnelFn,
    _library: Library,
    _memfd: Option<OwnedFd>,
}

/// Every library loaded so far, by SHA-1; entries are never removed.
static LOADED: Mutex<BTreeMap<String, Arc<CompatLibrary>>> = Mutex::new(BTreeMap::new());

impl std::fmt::Debug for CompatLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompatLibrary")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// A tunnel opened through a [`CompatLibrary`], handshake done. Keep it (or the
/// [`Arc<CompatLibrary>`] from [`CompatTunnel::into_parts`]) until the connection has
/// closed: the library stays loaded that long.
pub struct CompatTunnel {
    pub connection: Connection<ManagerSide>,
    library: Arc<CompatLibrary>,
}

impl CompatTunnel {
    pub fn into_parts(self) -> (Connection<ManagerSide>, Arc<CompatLibrary>) {
        (self.connection, self.library)
    }
}

impl CompatLibrary {
    /// The library with these verified bytes: the one already loaded, or [`Self::load`].
    pub(crate) fn load_once(
        file: &str,
        sha1: &str,
        bytes: &[u8],
        staging_dir: &Path,
        apple_rule: Option<&codervpn_codesign::Artifact>,
    ) -> Result<Arc<Self>, LoadError> {
        let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(library) = loaded.get(sha1) {
            debug!(file, sha1, "tunnel library already loaded");
            return Ok(Arc::clone(library));
        }
        let library = Arc::new(Self::load(file, sha1, bytes, staging_dir, apple_rule)?);
        loaded.insert(sha1.to_owned(), Arc::clone(&library));
        Ok(library)
    }

    /// `dlopen(RTLD_NOW | RTLD_LOCAL)` of `bytes` (already verified) and `dlsym("OpenTunnel")`.
    /// `staging_dir` must be private (it is the checked cache directory). On macOS the staged
    /// copy's code signature is checked against `apple_rule` before it is opened.
    fn load(
        file: &str,
        sha1: &str,
        bytes: &[u8],
        staging_dir: &Path,
        apple_rule: Option<&codervpn_codesign::Artifact>,
    ) -> Result<Self, LoadError> {
        let stage = |source| LoadError::Stage {
            file: file.to_owned(),
            source,
        };
        let (path, memfd, staged) = match memfd(&memfd_name(file, sha1), bytes, false) {
            Ok(Some(fd)) => (
                PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                Some(fd),
                None,
            ),
            Ok(None) => {
                let p = private_copy(staging_dir, file, bytes).map_err(stage)?;
                (p.clone(), None, Some(p))
            }
            Err(e) => return Err(stage(e)),
        };
        let signed = super::apple::check_staged(&path, apple_rule);
        debug!(file, path = %path.display(), "loading the verified tunnel library");
        let opened = signed.map(|()| {
            // SAFETY: the image is the verified bytes of a tunnel library whose signature was
            // checked against the pinned keys (or the operator chose insecure_skip_verify);
            // running its initialisers is what loading it means.
            unsafe { Library::open(Some(OsString::from(&path)), RTLD_NOW | RTLD_LOCAL) }
        });
        if let Some(p) = staged
            && let Err(e) = std::fs::remove_file(&p)
        {
            warn!(path = %p.display(), error = %e, "cannot remove the staged library copy");
        }
        let library = opened
            .map_err(|source| LoadError::Codesign {
                file: file.to_owned(),
                source,
            })?
            .map_err(|e| LoadError::Dlopen {
                file: file.to_owned(),
                detail: e.to_string(),
            })?;
        // SAFETY: OpenTunnel has exactly this C signature (§1.1); the pointer is copied out
        // and only used while `library` (kept in the same struct) is loaded.
        let open_tunnel = unsafe { library.get::<OpenTunnelFn>(b"OpenTunnel\0") }
            .map(|sym| *sym)
            .map_err(|e| LoadError::NoOpenTunnel {
                file: file.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(CompatLibrary {
            file: file.to_owned(),
            open_tunnel,
            _library: library,
            _memfd: memfd,
        })
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// Calls `OpenTunnel` on a blocking thread with two fresh pipes while handshaking as the
    /// manager on the other ends (§1.4), giving up after `handshake_timeout`.
    pub async fn open_tunnel(
        self: &Arc<Self>,
        handshake_timeout: Duration,
    ) -> Result<CompatTunnel, OpenTunnelError> {
        let file = || self.file.clone();
        let pipes = || -> std::io::Result<_> {
            let (tunnel_read, manager_write) = std::io::pipe()?;
            let (manager_read, tunnel_write) = std::io::pipe()?;
            let reader = FdReader::new(OwnedFd::from(manager_read))?;
            let writer = FdWriter::new(OwnedFd::from(manager_write))?;
            Ok((tunnel_read, tunnel_write, reader, writer))
        };
        let (tunnel_read, tunnel_write, reader, writer) =
            pipes().map_err(|source| OpenTunnelError::Pipes {
                file: file(),
                source,
            })?;
        let library = Arc::clone(self);
        let call = tokio::task::spawn_blocking(move || {
            // SAFETY: `open_tunnel` is OpenTunnel of `library`, which this closure keeps
            // loaded; both descriptors are open for the whole call (the library dups them).
            let code =
                unsafe { (library.open_tunnel)(tunnel_read.as_raw_fd(), tunnel_write.as_raw_fd()) };
            drop((tunnel_read, tunnel_write, library));
            code
        });
        let handshake = Connection::<ManagerSide>::handshake_until(
            reader,
            writer,
            VersionList::current(),
            tokio::time::sleep(handshake_timeout),
        )
        .await;
        let connection = match handshake {
            Ok(c) => c,
            Err(e) => {
                // Our ends are closed now; OpenTunnel sees EOF and returns.
                let code = tokio::time::timeout(ABANDON_WAIT, call).await;
                let detail = match code {
                    Ok(Ok(code)) if code != 0 => {
                        format!("{e}; OpenTunnel returned {code} ({})", meaning(code))
                    }
                    Ok(Ok(_)) | Ok(Err(_)) => e.to_string(),
                    Err(_) => format!("{e}; OpenTunnel has not returned either"),
                };
                return Err(OpenTunnelError::Handshake {
                    file: file(),
                    detail,
                });
            }
        };
        let code = call.await.unwrap_or(-99);
        if code != 0 {
            return Err(OpenTunnelError::Failed {
                file: file(),
                code,
                meaning: meaning(code),
            });
        }
        Ok(CompatTunnel {
            connection,
            library: Arc::clone(self),
        })
    }
}

/// The return codes of §1.3.
fn meaning(code: i32) -> &'static str {
    match code {
        0 => "handshake completed",
        -2 => "dup of the read descriptor failed",
        -3 => "dup of the write descriptor failed",
        -4 => "the descriptors could not be used as pipes",
        -5 => "tunnel construction failed (handshake or incompatible version)",
        _ => "unknown error code",
    }
}
