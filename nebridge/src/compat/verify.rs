//! The checks a downloaded artifact passes before anything loads it: the server's version
//! (dylib-abi-and-compat.md §5) and a minisign signature whose trusted comment binds the
//! file name, the Coder version and the platform (see docs/compat-signing.md).

use minisign_verify::{PublicKey, Signature};
use url::Url;

use super::download::{Limits, error_chain, request_error};

/// The oldest Coder server compat mode accepts for the library (dylib-abi-and-compat.md
/// §5; Coder Desktop for macOS before v0.8.0: `SignatureValidator.minimumCoderVersion`).
pub const MIN_SERVER_VERSION: SemVer = SemVer {
    major: 2,
    minor: 20,
    patch: 0,
};

/// The oldest Coder server whose CLI compat mode runs as `vpn-daemon run` (Coder Desktop
/// for macOS since v0.8.0: `Validator.minimumCoderVersion = "2.24.2"`).
pub const MIN_DAEMON_SERVER_VERSION: SemVer = SemVer {
    major: 2,
    minor: 24,
    patch: 2,
};

/// The first word of every trusted comment compat mode accepts.
pub const TRUSTED_COMMENT_TAG: &str = "codervpn-artifact";

/// Largest `.minisig` file compat mode reads.
const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

/// `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SemVer {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl std::fmt::Display for SemVer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl SemVer {
    /// The first match of `v(\d+\.\d+\.\d+)` in `text`, as the macOS managers parse
    /// `buildinfo.version` (pre-release and build suffixes are ignored).
    pub fn find_in(text: &str) -> Option<SemVer> {
        text.match_indices('v')
            .find_map(|(i, _)| Self::parse_prefix(&text[i + 1..]))
    }

    /// `major.minor.patch` with nothing before or after it.
    pub fn parse_exact(text: &str) -> Option<SemVer> {
        let mut parts = text.split('.');
        let v = SemVer {
            major: digits(parts.next()?)?,
            minor: digits(parts.next()?)?,
            patch: digits(parts.next()?)?,
        };
        parts.next().is_none().then_some(v)
    }

    fn parse_prefix(text: &str) -> Option<SemVer> {
        let (major, rest) = leading_number(text)?;
        let (minor, rest) = leading_number(rest.strip_prefix('.')?)?;
        let (patch, _) = leading_number(rest.strip_prefix('.')?)?;
        Some(SemVer {
            major,
            minor,
            patch,
        })
    }
}

fn digits(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn leading_number(s: &str) -> Option<(u64, &str)> {
    let end = s.bytes().take_while(u8::is_ascii_digit).count();
    Some((digits(&s[..end])?, &s[end..]))
}

/// The server's version as `/api/v2/buildinfo` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// The `version` string, verbatim (e.g. `v2.24.3+abc1234`).
    pub raw: String,
    pub semver: SemVer,
}

/// The fields a trusted comment binds: `codervpn-artifact file=… version=… platform=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedComment {
    pub file: String,
    pub version: String,
    pub platform: String,
}

impl std::fmt::Display for TrustedComment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{TRUSTED_COMMENT_TAG} file={} version={} platform={}",
            self.file, self.version, self.platform
        )
    }
}

impl TrustedComment {
    /// Parses `codervpn-artifact key=value …`: the three keys exactly once each; other
    /// `key=value` words are allowed and ignored.
    pub fn parse(text: &str) -> Result<TrustedComment, String> {
        let mut words = text.split_whitespace();
        if words.next() != Some(TRUSTED_COMMENT_TAG) {
            return Err(format!(
                "it does not start with {TRUSTED_COMMENT_TAG:?} (got {text:?})"
            ));
        }
        let (mut file, mut version, mut platform) = (None, None, None);
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(format!("{word:?} is not key=value"));
            };
            let slot = match key {
                "file" => &mut file,
                "version" => &mut version,
                "platform" => &mut platform,
                _ => continue,
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(format!("{key}= appears twice"));
            }
        }
        let missing = |key: &str| format!("{key}= is missing (got {text:?})");
        Ok(TrustedComment {
            file: file.ok_or_else(|| missing("file"))?,
            version: version.ok_or_else(|| missing("version"))?,
            platform: platform.ok_or_else(|| missing("platform"))?,
        })
    }
}

/// Why an artifact was refused. Each message starts with the check that failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("server version check failed: cannot read {url}: {detail}")]
    BuildInfo { url: Url, detail: String },
    #[error(
        "server version check failed: the Coder server at {server} reports version {raw:?}, below the minimum {minimum} compat mode supports for {what}"
    )]
    ServerTooOld {
        server: String,
        raw: String,
        minimum: SemVer,
        what: &'static str,
    },
    #[error("signature check failed: no minisign public keys are configured")]
    NoKeys,
    #[error(
        "signature check failed: configured public key #{index} is not a minisign public key: {detail}"
    )]
    BadKey { index: usize, detail: String },
    #[error(
        "signature check failed: this Coder server publishes no signature for {file} ({url} answered 404)"
    )]
    MissingSignature { file: String, url: Url },
    #[error("signature check failed: cannot fetch {url}: {detail}")]
    SignatureFetch { url: Url, detail: String },
    #[error("signature check failed: {url} is not a minisign signature: {detail}")]
    SignatureFormat { url: Url, detail: String },
    #[error(
        "signature check failed: {file} is signed with a key that is none of the {keys} configured public keys"
    )]
    UntrustedKey { file: String, keys: usize },
    #[error(
        "signature check failed: the minisign signature does not match the bytes of {file} (corrupted or tampered with)"
    )]
    BadSignature { file: String },
    #[error("trusted comment check failed for {file}: {problem}")]
    TrustedComment { file: String, problem: String },
    #[error(
        "version check failed: {file} is signed for Coder {signed}, but the server runs {server} ({raw:?})"
    )]
    VersionMismatch {
        file: String,
        signed: String,
        server: SemVer,
        raw: String,
    },
}

/// `GET <server>/api/v2/buildinfo` and its `version`, parsed per §5.
pub async fn server_version(
    client: &reqwest::Client,
    server: &Url,
    limits: Limits,
) -> Result<ServerVersion, VerifyError> {
    let url = join(server, "api/v2/buildinfo");
    let fail = |detail: String| VerifyError::BuildInfo {
        url: url.clone(),
        detail,
    };
    let body = small_get(client, &url, 1024 * 1024, limits)
        .await
        .map_err(fail)?
        .ok_or_else(|| fail("404 Not Found".into()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| fail(format!("not JSON: {e}")))?;
    let Some(raw) = json.get("version").and_then(|v| v.as_str()) else {
        return Err(fail("no \"version\" string in the answer".into()));
    };
    let Some(semver) = SemVer::find_in(raw) else {
        return Err(fail(format!(
            "version {raw:?} has no vMAJOR.MINOR.PATCH in it"
        )));
    };
    Ok(ServerVersion {
        raw: raw.to_owned(),
        semver,
    })
}

/// Refuses a server older than `minimum` (the artifact's, `what`).
pub fn check_minimum(
    server: &Url,
    version: &ServerVersion,
    minimum: SemVer,
    what: &'static str,
) -> Result<(), VerifyError> {
    if version.semver < minimum {
        return Err(VerifyError::ServerTooOld {
            server: server.to_string(),
            raw: version.raw.clone(),
            minimum,
            what,
        });
    }
    Ok(())
}

/// Parses the configured public keys (a bare base64 key, or a whole `minisign.pub`).
pub fn parse_keys(keys: &[String]) -> Result<Vec<PublicKey>, VerifyError> {
    if keys.is_empty() {
        return Err(VerifyError::NoKeys);
    }
    keys.iter()
        .enumerate()
        .map(|(index, text)| {
            let text = text.trim();
            let parsed = if text.contains('\n') {
                PublicKey::decode(text)
            } else {
                PublicKey::from_base64(text)
            };
            parsed.map_err(|e| VerifyError::BadKey {
                index,
                detail: e.to_string(),
            })
        })
        .collect()
}

/// Fetches `<artifact url>.minisig`.
pub async fn fetch_signature(
    client: &reqwest::Client,
    artifact: &Url,
    file: &str,
    limits: Limits,
) -> Result<Signature, VerifyError> {
    let mut url = artifact.clone();
    url.set_path(&format!("{}.minisig", artifact.path()));
    let body = small_get(client, &url, MAX_SIGNATURE_BYTES, limits)
        .await
        .map_err(|detail| VerifyError::SignatureFetch {
            url: url.clone(),
            detail,
        })?
        .ok_or_else(|| VerifyError::MissingSignature {
            file: file.to_owned(),
            url: url.clone(),
        })?;
    let text = String::from_utf8(body).map_err(|_| VerifyError::SignatureFormat {
        url: url.clone(),
        detail: "not UTF-8 text".into(),
    })?;
    Signature::decode(&text).map_err(|e| VerifyError::SignatureFormat {
        url,
        detail: e.to_string(),
    })
}

/// Verifies `bytes` against `signature` with any of `keys`, then checks that the signed
/// trusted comment names `expected`'s file, version and platform.
pub fn check_signature(
    bytes: &[u8],
    signature: &Signature,
    keys: &[PublicKey],
    expected: &TrustedComment,
    server: &ServerVersion,
) -> Result<(), VerifyError> {
    let file = || expected.file.clone();
    let mut outcome = Err(VerifyError::UntrustedKey {
        file: file(),
        keys: keys.len(),
    });
    for key in keys {
        match key.verify(bytes, signature, false) {
            Ok(()) => {
                outcome = Ok(());
                break;
            }
            Err(minisign_verify::Error::UnexpectedKeyId) => {}
            Err(minisign_verify::Error::InvalidSignature) => {
                return Err(VerifyError::BadSignature { file: file() });
            }
            Err(e) => {
                return Err(VerifyError::TrustedComment {
                    file: file(),
                    problem: format!("unusable signature: {e}"),
                });
            }
        }
    }
    outcome?;
    let signed = TrustedComment::parse(signature.trusted_comment()).map_err(|problem| {
        VerifyError::TrustedComment {
            file: file(),
            problem: format!("the trusted comment is not a codervpn-artifact comment: {problem}"),
        }
    })?;
    if signed.version != expected.version {
        return Err(VerifyError::VersionMismatch {
            file: file(),
            signed: signed.version,
            server: server.semver,
            raw: server.raw.clone(),
        });
    }
    for (what, got, want) in [
        ("file", &signed.file, &expected.file),
        ("platform", &signed.platform, &expected.platform),
    ] {
        if got != want {
            return Err(VerifyError::TrustedComment {
                file: file(),
                problem: format!("it is signed for {what}={got}, expected {what}={want}"),
            });
        }
    }
    Ok(())
}

/// `server` joined with a relative path, keeping any path prefix of the deployment URL.
pub fn join(server: &Url, relative: &str) -> Url {
    let mut base = server.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join(relative).unwrap_or(base)
}

/// A small GET: `Ok(None)` on 404, the body on 200, an error text otherwise.
async fn small_get(
    client: &reqwest::Client,
    url: &Url,
    max: u64,
    limits: Limits,
) -> Result<Option<Vec<u8>>, String> {
    let get = async {
        let mut response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| request_error(url, &e).to_string())?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status.is_redirection() {
            let to = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(no Location)");
            return Err(format!(
                "redirected to {to}, another origin; refusing to follow"
            ));
        }
        if status != reqwest::StatusCode::OK {
            return Err(format!("HTTP {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > max {
                return Err(format!("answer exceeds {max} bytes"));
            }
        }
        Ok(Some(body))
    };
    tokio::time::timeout(limits.idle_timeout, get)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", limits.idle_timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_version_uses_the_first_v_semver() {
        let v = |s| SemVer::find_in(s).map(|v| v.to_string());
        assert_eq!(v("v2.24.3").as_deref(), Some("2.24.3"));
        assert_eq!(v("v2.20.0-rc.1+abc").as_deref(), Some("2.20.0"));
        assert_eq!(v("devel v2.19.10-devel+0a1b").as_deref(), Some("2.19.10"));
        assert_eq!(v("2.24.3"), None);
        assert_eq!(v("v2.24"), None);
    }

    #[test]
    fn versions_compare_numerically() {
        let v = |s| SemVer::parse_exact(s).expect("version");
        assert!(v("2.9.0") < v("2.20.0"));
        assert!(v("2.20.0") >= MIN_SERVER_VERSION);
        assert!(v("2.19.99") < MIN_SERVER_VERSION);
        assert_eq!(SemVer::parse_exact("2.20"), None);
        assert_eq!(SemVer::parse_exact("2.20.0.1"), None);
    }

    #[test]
    fn trusted_comment_round_trips_and_ignores_extra_keys() {
        let c = TrustedComment {
            file: "coder-vpn-linux-amd64.so".into(),
            version: "2.24.1".into(),
            platform: "linux-x86_64".into(),
        };
        assert_eq!(TrustedComment::parse(&c.to_string()), Ok(c.clone()));
        let extra = format!("{c} built=2026-11-26");
        assert_eq!(TrustedComment::parse(&extra), Ok(c));
    }

    #[test]
    fn trusted_comment_needs_the_tag_and_each_key_once() {
        assert!(TrustedComment::parse("timestamp:1 file:x").is_err());
        assert!(TrustedComment::parse("codervpn-artifact file=a version=1.2.3").is_err());
        assert!(
            TrustedComment::parse("codervpn-artifact file=a file=b version=1 platform=p").is_err()
        );
    }
}
