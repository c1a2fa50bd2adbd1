//! Compat mode: download a tunnel artifact from the Coder server, verify it, then load it
//! (dylib-abi-and-compat.md §1, §3–§5; manager-behaviour.md §9–§12).
//!
//! ```text
//! fetch_verified(config, ArtifactKind::Library, progress)
//!   1. GET <server>/api/v2/buildinfo          server version, must be >= 2.20.0 (library)
//!                                             or >= 2.24.2 (the CLI as a daemon)
//!   2. GET <server>/bin/coder-vpn-<os>-<arch>.<so|dylib>   (or coder-<os>-<arch>)
//!        If-None-Match: "<sha1 of the cached copy>"; 304 keeps the cache
//!        200 streams into a temp file in the private cache dir (size cap, timeouts,
//!        length and ETag checked), bytes kept in memory; the cache dir and every
//!        directory above it must be writable by root or us only (sticky ones aside)
//!   3. GET <file URL>.minisig                 minisign signature, checked against the
//!        pinned public keys; its trusted comment must read
//!        `codervpn-artifact file=<file> version=<server major.minor.patch> platform=<os>-<arch>`
//!   4. pass: fsync + rename into the cache;   fail: delete the file, refuse
//!        (mode 0600, never executed)          (a cached copy failing after a 304 is
//!                                             deleted and downloaded once more)
//! VerifiedArtifact::load_library()            the verified in-memory bytes, via a sealed
//!                                             memfd (Linux), dlopen + dlsym OpenTunnel;
//!                                             never unloaded, loaded once per SHA-1
//! CompatLibrary::open_tunnel(timeout)         OpenTunnel on a blocking thread while we
//!                                             handshake as the manager → CompatTunnel
//! launch::spawn_daemon(artifact, …)           the verified in-memory bytes in a sealed
//!                                             memfd (Linux), run as `coder version
//!                                             --output=json`, then `coder vpn-daemon run`
//! ```
//!
//! The verified bytes are the loaded or run bytes: nothing re-reads the cache file between
//! the checks and `dlopen` or `execve`, so there is no check-then-swap window. On Linux no
//! executable file is written at all; elsewhere a mode-0500 copy in the cache directory is
//! loaded or run and deleted at once ([`Executable`]).
//!
//! Trusted comment format (also in docs/compat-signing.md): the first word is
//! `codervpn-artifact`, followed by `key=value` words; `file`, `version` and `platform`
//! must each appear exactly once, other keys are ignored. `file` is the artifact's name
//! under `/bin/`, `version` the server's `major.minor.patch` as parsed from buildinfo (a
//! `v2.24.1-rc.2+abc` server needs `version=2.24.1`), `platform` is `<os>-<arch>` in Rust's
//! spelling (`linux-x86_64`, `macos-aarch64`).
//!
//! `insecure_skip_verify` skips the signature and trusted-comment checks (never the server
//! version check) and logs a WARN every time it is used.
//!
//! On macOS the staged copy also has to pass the code-signing checks of
//! dylib-abi-and-compat.md §6.1/§6.3 (the crate `codervpn-codesign`, through `apple.rs`)
//! right before it is loaded or run; compiled for macOS, never run on a Mac.

pub use codervpn_codesign as codesign;
mod apple;
mod download;
mod exec;
pub mod launch;
mod load;
mod private_dir;
mod sealed;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};
use url::Url;

pub use download::{DownloadError, Limits, Progress};
pub use exec::Executable;
pub use load::{CompatLibrary, CompatTunnel, LoadError, OpenTunnelError};
pub use private_dir::ensure_private_dir;
pub use verify::{
    MIN_DAEMON_SERVER_VERSION, MIN_SERVER_VERSION, SemVer, ServerVersion, TRUSTED_COMMENT_TAG,
    TrustedComment, VerifyError,
};

/// The header Coder reads the session token from.
pub const SESSION_TOKEN_HEADER: &str = "Coder-Session-Token";
/// Default size cap for a downloaded artifact.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default longest wait for the next chunk of data.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default longest download, head and body.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(300);
/// Default handshake timeout for [`CompatLibrary::open_tunnel`] (manager-behaviour.md §9).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything compat mode needs to fetch and verify an artifact.
#[derive(Clone)]
pub struct CompatConfig {
    /// The Coder deployment URL (`https://coder.example.com`).
    pub server: Url,
    /// Private cache directory (created 0700; refused when anyone but root and us can write
    /// it or a directory above it, see [`ensure_private_dir`]).
    pub cache_dir: PathBuf,
    /// The user's literal headers, sent with every request.
    pub headers: Vec<(String, String)>,
    /// Sent as `Coder-Session-Token` when set.
    pub session_token: Option<String>,
    /// Allow `http://` (the caller sets this for loopback hosts only).
    pub allow_http: bool,
    pub max_bytes: u64,
    pub idle_timeout: Duration,
    pub total_timeout: Duration,
    /// Pinned minisign public keys: bare base64 keys or whole `minisign.pub` files.
    pub public_keys: Vec<String>,
    /// Development only: skip the signature checks (WARN logged on every use).
    pub insecure_skip_verify: bool,
}

impl std::fmt::Debug for CompatConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompatConfig")
            .field("server", &self.server.as_str())
            .field("cache_dir", &self.cache_dir)
            .field("headers", &self.headers.len())
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<set>"),
            )
            .field("allow_http", &self.allow_http)
            .field("max_bytes", &self.max_bytes)
            .field("public_keys", &self.public_keys.len())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish_non_exhaustive()
    }
}

impl CompatConfig {
    /// Defaults for everything but the server, the cache directory and the keys.
    pub fn new(server: Url, cache_dir: PathBuf, public_keys: Vec<String>) -> Self {
        Self {
            server,
            cache_dir,
            headers: Vec::new(),
            session_token: None,
            allow_http: false,
            max_bytes: DEFAULT_MAX_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
            public_keys,
            insecure_skip_verify: false,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_bytes,
            idle_timeout: self.idle_timeout,
            total_timeout: self.total_timeout,
        }
    }
}

/// Which artifact to fetch (dylib-abi-and-compat.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// `coder-vpn-<os>-<arch>.<dylib|so>`, loaded with `dlopen`.
    Library,
    /// `coder-<os>-<arch>[.exe]`, run as `vpn-daemon run`.
    Daemon,
}

impl ArtifactKind {
    /// What the artifact is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ArtifactKind::Library => "CoderVPN library",
            ArtifactKind::Daemon => "Coder CLI (vpn-daemon)",
        }
    }

    /// The oldest server this kind of artifact is taken from.
    pub fn min_server_version(self) -> SemVer {
        match self {
            ArtifactKind::Library => MIN_SERVER_VERSION,
            ArtifactKind::Daemon => MIN_DAEMON_SERVER_VERSION,
        }
    }
}

/// An OS and architecture in Go's spelling (for `/bin/` names) and Rust's (for signatures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `darwin`, `windows`.
    pub go_os: &'static str,
    /// `amd64`, `arm64`.
    pub go_arch: &'static str,
}

impl Platform {
    /// This process's platform, or `None` on one Coder publishes no artifacts for.
    pub fn current() -> Option<Platform> {
        let go_os = match std::env::consts::OS {
            "linux" => "linux",
            "macos" => "darwin",
            "windows" => "windows",
            _ => return None,
        };
        let go_arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            _ => return None,
        };
        Some(Platform { go_os, go_arch })
    }

    /// The `/bin/` file name of `kind` for this platform.
    pub fn file_name(&self, kind: ArtifactKind) -> String {
        let (os, arch) = (self.go_os, self.go_arch);
        match kind {
            ArtifactKind::Library => {
                let ext = if os == "darwin" { "dylib" } else { "so" };
                format!("coder-vpn-{os}-{arch}.{ext}")
            }
            ArtifactKind::Daemon if os == "windows" => format!("coder-{os}-{arch}.exe"),
            ArtifactKind::Daemon => format!("coder-{os}-{arch}"),
        }
    }

    /// `platform=` of the trusted comment: Rust's `<os>-<arch>` (`linux-x86_64`).
    pub fn signing_name(&self) -> String {
        let os = match self.go_os {
            "darwin" => "macos",
            other => other,
        };
        let arch = match self.go_arch {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            other => other,
        };
        format!("{os}-{arch}")
    }
}

/// Any way compat mode can refuse.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    #[error("compat mode is not available on {os}-{arch}: Coder publishes no artifacts for it")]
    UnsupportedPlatform {
        os: &'static str,
        arch: &'static str,
    },
    #[error("invalid request header for {server}: {detail}")]
    Headers { server: Url, detail: String },
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// An artifact that passed every check, held in memory.
pub struct VerifiedArtifact {
    pub kind: ArtifactKind,
    pub file: String,
    pub url: Url,
    pub server_version: ServerVersion,
    /// Lower-case hex SHA-1 of `bytes`.
    pub sha1: String,
    /// False only with `insecure_skip_verify`.
    pub signature_checked: bool,
    /// True when the server answered 304 and the cached copy was used.
    pub from_cache: bool,
    bytes: Vec<u8>,
    staging_dir: PathBuf,
}

impl std::fmt::Debug for VerifiedArtifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedArtifact")
            .field("kind", &self.kind)
            .field("file", &self.file)
            .field("url", &self.url.as_str())
            .field("server_version", &self.server_version.raw)
            .field("sha1", &self.sha1)
            .field("len", &self.bytes.len())
            .field("signature_checked", &self.signature_checked)
            .field("from_cache", &self.from_cache)
            .finish_non_exhaustive()
    }
}

impl VerifiedArtifact {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Loads these bytes (sealed memfd on Linux; see [`CompatLibrary`]) and resolves
    /// `OpenTunnel`. Loading the same bytes again returns the library already loaded.
    pub fn load_library(&self) -> Result<std::sync::Arc<CompatLibrary>, LoadError> {
        match self.kind {
            ArtifactKind::Library => {}
            ArtifactKind::Daemon => {
                return Err(LoadError::NotALibrary {
                    file: self.file.clone(),
                    what: self.kind.describe(),
                });
            }
        }
        CompatLibrary::load_once(
            &self.file,
            &self.sha1,
            &self.bytes,
            &self.staging_dir,
            self.apple_rule().as_ref(),
        )
    }

    /// These bytes as something to run (the daemon): a sealed memfd on Linux, else a
    /// mode-0500 copy in the private cache directory deleted when the [`Executable`] is
    /// dropped. Never the cached file, which is kept mode 0600 and never run.
    pub fn executable(&self) -> std::io::Result<Executable> {
        Executable::new(
            &self.file,
            &self.sha1,
            &self.bytes,
            &self.staging_dir,
            self.apple_rule().as_ref(),
        )
    }

    /// The code-signing rule macOS checks the staged copy against ([`apple`]); none when
    /// the operator skipped verification.
    fn apple_rule(&self) -> Option<codervpn_codesign::Artifact> {
        self.signature_checked
            .then(|| apple::rule(self.kind, &self.server_version.semver))
    }
}

/// Downloads (or revalidates) the `kind` artifact of `config.server` and runs every check;
/// see the module documentation. `progress` sees the bytes received of a 200 body.
pub async fn fetch_verified(
    config: &CompatConfig,
    kind: ArtifactKind,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<VerifiedArtifact, CompatError> {
    let Some(platform) = Platform::current() else {
        return Err(CompatError::UnsupportedPlatform {
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
        });
    };
    download::check_scheme(&config.server, config.allow_http)?;
    let mut headers = config.headers.clone();
    if let Some(token) = &config.session_token {
        headers.push((SESSION_TOKEN_HEADER.into(), token.clone()));
    }
    let client =
        download::client(&headers, config.idle_timeout).map_err(|detail| CompatError::Headers {
            server: config.server.clone(),
            detail,
        })?;
    let limits = config.limits();
    let server_version = verify::server_version(&client, &config.server, limits).await?;
    verify::check_minimum(
        &config.server,
        &server_version,
        kind.min_server_version(),
        kind.describe(),
    )?;
    let keys = if config.insecure_skip_verify {
        Vec::new()
    } else {
        verify::parse_keys(&config.public_keys)?
    };
    let file = platform.file_name(kind);
    let url = verify::join(&config.server, &format!("bin/{file}"));
    let expected = TrustedComment {
        file: file.clone(),
        version: server_version.semver.to_string(),
        platform: platform.signing_name(),
    };
    let what = kind.describe();
    let dir = &config.cache_dir;
    let mut fetched = download::fetch(&client, &url, what, dir, &file, limits, progress).await?;
    let mut checked = check(config, &client, &fetched, &keys, &expected, &server_version).await;
    if checked.is_err() && matches!(fetched.origin, download::Origin::Cached { .. }) {
        warn!(%url, "cached copy failed verification after 304 Not Modified; downloading it again");
        fetched.discard().await;
        fetched = download::fetch(&client, &url, what, dir, &file, limits, progress).await?;
        checked = check(config, &client, &fetched, &keys, &expected, &server_version).await;
    }
    if let Err(e) = checked {
        warn!(%url, error = %e, "refusing the artifact; deleting it");
        fetched.discard().await;
        return Err(e.into());
    }
    let from_cache = matches!(fetched.origin, download::Origin::Cached { .. });
    let (bytes, sha1) = (std::mem::take(&mut fetched.bytes), fetched.sha1.clone());
    fetched.commit().await?;
    sealed::sweep_stale_copies(dir, &file);
    info!(%url, sha1 = %sha1, from_cache, server = %server_version.raw, "artifact verified");
    Ok(VerifiedArtifact {
        kind,
        file,
        url,
        server_version,
        sha1,
        signature_checked: !config.insecure_skip_verify,
        from_cache,
        bytes,
        staging_dir: config.cache_dir.clone(),
    })
}

/// The signature checks (or the loud skip).
async fn check(
    config: &CompatConfig,
    client: &reqwest::Client,
    fetched: &download::Fetched,
    keys: &[minisign_verify::PublicKey],
    expected: &TrustedComment,
    server: &ServerVersion,
) -> Result<(), VerifyError> {
    if config.insecure_skip_verify {
        warn!(
            url = %fetched.url,
            sha1 = %fetched.sha1,
            "INSECURE: insecure_skip_verify is set; loading {} WITHOUT checking its signature. \
             Anyone who can change what this server serves can run code in this process.",
            expected.file
        );
        return Ok(());
    }
    let limits = config.limits();
    let signature = verify::fetch_signature(client, &fetched.url, &expected.file, limits).await?;
    verify::check_signature(&fetched.bytes, &signature, keys, expected, server)
}
