//! Conditional, size-capped artifact download into a private cache directory
//! (dylib-abi-and-compat.md §3–§4).
//!
//! The body is streamed into `.<name>.download-<unique>` inside the cache directory while
//! its SHA-1 is computed and the bytes are kept in memory (they are what gets verified and
//! loaded or run). The file is created mode 0600, and a cached one is put back to 0600
//! when read: it is data, never executed. Nothing is renamed into place here: [`Fetched::commit`] does that after the
//! caller has verified the bytes, [`Fetched::discard`] deletes what failed.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, ETAG, IF_NONE_MATCH, LOCATION};
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::{debug, warn};
use url::Url;

/// Bytes received so far and the announced total, when the server announced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub bytes: u64,
    pub total: Option<u64>,
}

/// Limits for one download.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    /// Longest wait for the next chunk of the body (or for the response head).
    pub idle_timeout: Duration,
    /// Whole request, head and body.
    pub total_timeout: Duration,
}

/// Why a download failed. Every variant names the URL or path it is about.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "refusing to download {url}: only https:// URLs are allowed (allow_http is off; it is meant for loopback test servers)"
    )]
    InsecureUrl { url: Url },
    #[error("this Coder server does not publish the {what} ({url} answered 404)")]
    NotPublished { what: &'static str, url: Url },
    #[error("{url} answered HTTP {status}; expected 200 or 304")]
    Status { url: Url, status: StatusCode },
    #[error("{url} redirected to {location}, another origin; refusing to follow")]
    CrossOriginRedirect { url: Url, location: String },
    #[error("cannot fetch {url}: {detail}")]
    Request { url: Url, detail: String },
    #[error("{url} is too large: {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { url: Url, size: u64, limit: u64 },
    #[error("{url}: received {got} bytes, but the server announced {expected}")]
    LengthMismatch { url: Url, got: u64, expected: u64 },
    #[error("{url}: ETag {etag} does not match the SHA-1 {sha1} of the received bytes")]
    EtagMismatch {
        url: Url,
        etag: Box<str>,
        sha1: Box<str>,
    },
    #[error("{url}: no data for {idle:?}")]
    IdleTimeout { url: Url, idle: Duration },
    #[error("{url}: download did not finish within {total:?}")]
    TotalTimeout { url: Url, total: Duration },
    #[error("cache directory {}: {problem}", .dir.display())]
    CacheDir { dir: PathBuf, problem: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the bytes of a [`Fetched`] came from.
#[derive(Debug)]
pub enum Origin {
    /// `304 Not Modified`: the cached file, re-read.
    Cached { path: PathBuf },
    /// `200`: a temporary file beside the destination, not yet renamed into place.
    Downloaded { temp: PathBuf, dest: PathBuf },
}

/// A downloaded (or revalidated) artifact, held in memory, awaiting verification.
#[derive(Debug)]
pub struct Fetched {
    pub url: Url,
    pub bytes: Vec<u8>,
    /// Lower-case hex SHA-1 of `bytes`.
    pub sha1: String,
    pub origin: Origin,
}

impl Fetched {
    /// Puts verified bytes in place: fsync, rename over the destination, fsync the directory.
    pub async fn commit(self) -> Result<(), DownloadError> {
        match self.origin {
            Origin::Cached { .. } => Ok(()),
            Origin::Downloaded { temp, dest } => {
                tokio::fs::rename(&temp, &dest)
                    .await
                    .map_err(|source| DownloadError::Io {
                        path: dest.clone(),
                        source,
                    })?;
                if let Some(dir) = dest.parent() {
                    let dir = dir.to_owned();
                    let synced = tokio::task::spawn_blocking(move || {
                        std::fs::File::open(&dir).and_then(|d| d.sync_all())
                    })
                    .await;
                    if let Ok(Err(e)) | Err(e) = synced.map_err(std::io::Error::other) {
                        warn!(dir = %dest.display(), error = %e, "cannot fsync the cache directory");
                    }
                }
                Ok(())
            }
        }
    }

    /// Deletes the file these bytes came from: the temporary file of a fresh download, or
    /// the cached file that failed revalidation after a 304.
    pub async fn discard(self) {
        let path = match self.origin {
            Origin::Cached { path } => path,
            Origin::Downloaded { temp, .. } => temp,
        };
        if let Err(e) = tokio::fs::remove_file(&path).await {
            warn!(path = %path.display(), error = %e, "cannot delete a rejected artifact");
        }
    }
}

/// Refuses anything but `https://` unless `allow_http`.
pub fn check_scheme(url: &Url, allow_http: bool) -> Result<(), DownloadError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        _ => Err(DownloadError::InsecureUrl { url: url.clone() }),
    }
}

/// A client that follows redirects only within the origin of the first URL (at most 5),
/// trusting what the tunnel trusts ([`codervpn_engine::host::tls`]). `headers` (the user's literal headers and the session token) go with every request.
pub fn client(
    headers: &[(String, String)],
    connect_timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("header name {name:?}: {e}"))?;
        let mut value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|e| format!("value of header {name}: {e}"))?;
        value.set_sensitive(true);
        map.append(name, value);
    }
    // The tunnel's trust (system roots plus SSL_CERT_FILE), as for REST, tailnet and DERP.
    let tls = codervpn_engine::host::tls::default_client_config().map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .default_headers(map)
        .redirect(codervpn_engine::host::same_origin_redirects())
        .connect_timeout(connect_timeout)
        .build()
        .map_err(|e| error_chain(&e))
}

/// Downloads `url` into `cache_dir/file_name`'s temp file, or revalidates the cached copy
/// with `If-None-Match`. `what` names the artifact in the 404 message.
pub async fn fetch(
    client: &reqwest::Client,
    url: &Url,
    what: &'static str,
    cache_dir: &Path,
    file_name: &str,
    limits: Limits,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Fetched, DownloadError> {
    let deadline = Instant::now() + limits.total_timeout;
    let total_timeout = || DownloadError::TotalTimeout {
        url: url.clone(),
        total: limits.total_timeout,
    };
    super::ensure_private_dir(cache_dir)?;
    let dest = cache_dir.join(file_name);
    let cached = read_cached(&dest, limits.max_bytes).await?;
    let mut request = client.get(url.clone());
    if let Some((_, sha1)) = &cached {
        request = request.header(IF_NONE_MATCH, format!("\"{sha1}\""));
    }
    let response = within(url, limits, deadline, request.send()).await?;
    let status = response.status();
    match status {
        StatusCode::NOT_MODIFIED => {
            let Some((bytes, sha1)) = cached else {
                return Err(DownloadError::Status {
                    url: url.clone(),
                    status,
                });
            };
            debug!(%url, "304 Not Modified: keeping the cached copy");
            return Ok(Fetched {
                url: url.clone(),
                bytes,
                sha1,
                origin: Origin::Cached { path: dest },
            });
        }
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(DownloadError::NotPublished {
                what,
                url: url.clone(),
            });
        }
        s if s.is_redirection() => {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(no Location)")
                .to_owned();
            return Err(DownloadError::CrossOriginRedirect {
                url: url.clone(),
                location,
            });
        }
        s => {
            return Err(DownloadError::Status {
                url: url.clone(),
                status: s,
            });
        }
    }
    let original = header_u64(&response, "x-original-content-length");
    let length = header_u64(&response, CONTENT_LENGTH.as_str());
    // The uncompressed size when the server says it, else the body's; either one over the
    // cap refuses at once (and the cap is enforced on the bytes received regardless).
    let announced = original.or(length);
    if let Some(size) = original.max(length).filter(|&n| n > limits.max_bytes) {
        return Err(DownloadError::TooLarge {
            url: url.clone(),
            size,
            limit: limits.max_bytes,
        });
    }
    let etag = response
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (temp, mut file) = create_temp(cache_dir, file_name).await?;
    let body = stream_body(
        response, url, &temp, announced, limits, deadline, &mut file, progress,
    );
    let received = match tokio::time::timeout_at(deadline, body).await {
        Ok(Ok(received)) => {
            file.sync_all()
                .await
                .map(|()| received)
                .map_err(|source| DownloadError::Io {
                    path: temp.clone(),
                    source,
                })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(total_timeout()),
    };
    drop(file);
    let checked = received.and_then(|(bytes, sha1)| {
        check_integrity(url, &bytes, &sha1, announced, etag.as_deref()).map(|()| (bytes, sha1))
    });
    match checked {
        Ok((bytes, sha1)) => Ok(Fetched {
            url: url.clone(),
            bytes,
            sha1,
            origin: Origin::Downloaded { temp, dest },
        }),
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            Err(e)
        }
    }
}

/// The cached file and its SHA-1, if one exists and is a plain file within the size cap.
/// A cached file that is not usable is deleted (it will be downloaded again).
async fn read_cached(
    path: &Path,
    max_bytes: u64,
) -> Result<Option<(Vec<u8>, String)>, DownloadError> {
    let owned = path.to_owned();
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&owned)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() > max_bytes {
            return Err(std::io::Error::other(
                "not a regular file within the size cap",
            ));
        }
        // The cache is data, never run (the daemon runs from a memfd): 0600, whatever
        // changed it.
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        if mode != 0o600 {
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(max_bytes + 1).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    })
    .await
    .map_err(std::io::Error::other);
    match read {
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(bytes))) if bytes.len() as u64 <= max_bytes => {
            let sha1 = hex::encode(Sha1::digest(&bytes));
            Ok(Some((bytes, sha1)))
        }
        Ok(Ok(Some(_))) | Ok(Err(_)) | Err(_) => {
            warn!(path = %path.display(), "cached artifact is unusable; downloading it again");
            match tokio::fs::remove_file(path).await {
                Ok(()) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(DownloadError::Io {
                    path: path.to_owned(),
                    source,
                }),
            }
        }
    }
}

/// `.<name>.download-<pid>-<nanos>-<n>` in `dir`, created exclusively with mode 0600.
async fn create_temp(
    dir: &Path,
    file_name: &str,
) -> Result<(PathBuf, tokio::fs::File), DownloadError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(
        ".{file_name}.download-{}-{nanos}-{n}",
        std::process::id()
    ));
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)
        .await
        .map_err(|source| DownloadError::Io {
            path: temp.clone(),
            source,
        })?;
    Ok((temp, file))
}

/// Streams the body into `file` and memory, enforcing the size cap on the bytes actually
/// received and the idle timeout between chunks.
#[allow(clippy::too_many_arguments)]
async fn stream_body(
    mut response: reqwest::Response,
    url: &Url,
    temp: &Path,
    announced: Option<u64>,
    limits: Limits,
    deadline: Instant,
    file: &mut tokio::fs::File,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(Vec<u8>, String), DownloadError> {
    let mut hasher = Sha1::new();
    let mut bytes = Vec::with_capacity(announced.unwrap_or(0) as usize);
    progress(Progress {
        bytes: 0,
        total: announced,
    });
    loop {
        let Some(chunk) = within(url, limits, deadline, response.chunk()).await? else {
            break;
        };
        let size = (bytes.len() + chunk.len()) as u64;
        if size > limits.max_bytes {
            return Err(DownloadError::TooLarge {
                url: url.clone(),
                size,
                limit: limits.max_bytes,
            });
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|source| DownloadError::Io {
                path: temp.to_owned(),
                source,
            })?;
        progress(Progress {
            bytes: size,
            total: announced,
        });
    }
    file.flush().await.map_err(|source| DownloadError::Io {
        path: temp.to_owned(),
        source,
    })?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// `step` bounded by the idle timeout and by the whole download's deadline.
async fn within<T>(
    url: &Url,
    limits: Limits,
    deadline: Instant,
    step: impl std::future::Future<Output = reqwest::Result<T>>,
) -> Result<T, DownloadError> {
    let idle = tokio::time::timeout(limits.idle_timeout, step);
    match tokio::time::timeout_at(deadline, idle).await {
        Err(_) => Err(DownloadError::TotalTimeout {
            url: url.clone(),
            total: limits.total_timeout,
        }),
        Ok(Err(_)) => Err(DownloadError::IdleTimeout {
            url: url.clone(),
            idle: limits.idle_timeout,
        }),
        Ok(Ok(Err(e))) => Err(request_error(url, &e)),
        Ok(Ok(Ok(value))) => Ok(value),
    }
}

/// The byte count against the announced length, the SHA-1 against the `ETag`.
fn check_integrity(
    url: &Url,
    bytes: &[u8],
    sha1: &str,
    announced: Option<u64>,
    etag: Option<&str>,
) -> Result<(), DownloadError> {
    let got = bytes.len() as u64;
    if let Some(expected) = announced.filter(|&n| n != got) {
        return Err(DownloadError::LengthMismatch {
            url: url.clone(),
            got,
            expected,
        });
    }
    if let Some(etag) = etag {
        let bare = etag.trim_start_matches("W/").trim_matches('"');
        if !bare.eq_ignore_ascii_case(sha1) {
            return Err(DownloadError::EtagMismatch {
                url: url.clone(),
                etag: etag.into(),
                sha1: sha1.into(),
            });
        }
    }
    Ok(())
}

fn header_u64(response: &reqwest::Response, name: &str) -> Option<u64> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

pub(crate) fn request_error(url: &Url, e: &reqwest::Error) -> DownloadError {
    DownloadError::Request {
        url: url.clone(),
        detail: error_chain(e),
    }
}

/// `error: cause: cause`, since reqwest's own text rarely says what went wrong.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
