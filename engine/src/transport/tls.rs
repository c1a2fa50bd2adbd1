//! One TLS trust configuration for every connection a tunnel makes to a deployment — REST,
//! the tailnet websocket and DERP: rustls on ring, trusting the system's root certificates
//! plus, when `SSL_CERT_FILE` is set, the PEM certificates in that file.
//!
//! That is what Go's `crypto/x509` trusts on Linux (`root_unix.go`: `SSL_CERT_FILE` replaces
//! the default bundle file, the default directories `/etc/ssl/certs` and `/etc/pki/tls/certs`
//! are still read unless `SSL_CERT_DIR` names others), so the Go tunnel and ours accept the
//! same servers. Embedders and tests add their own roots with [`client_config_with_ca_pem`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// ALPN protocol DERP offers (tailnet.md §13.3 "TLS": only `http/1.1`).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// Go's default certificate directories on Linux (`crypto/x509/root_linux.go`).
const GO_CERT_DIRS: [&str; 2] = ["/etc/ssl/certs", "/etc/pki/tls/certs"];
const ENV_CERT_FILE: &str = "SSL_CERT_FILE";
const ENV_CERT_DIR: &str = "SSL_CERT_DIR";

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read CA certificates from {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} holds no usable PEM certificate")]
    NoCertificates { what: String },
    #[error("cannot build the TLS client configuration: {0}")]
    Build(#[from] rustls::Error),
}

/// The trust configuration every connection uses unless told otherwise: system roots plus
/// `SSL_CERT_FILE`, loaded once. No ALPN (callers that want it set it on a copy).
pub fn default_client_config() -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| client_config(system_roots().clone()).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| TlsConfigError::Build(rustls::Error::General(e)))
}

/// The default trust plus the PEM certificates in `pem` (for a private CA).
pub fn client_config_with_ca_pem(pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = system_roots().clone();
    let added = add_pem(&mut roots, pem);
    if added == 0 {
        return Err(TlsConfigError::NoCertificates {
            what: "the given CA PEM".into(),
        });
    }
    client_config(roots)
}

/// [`client_config_with_ca_pem`] with the PEM read from `path`.
pub fn client_config_with_ca_file(
    path: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let pem = std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    client_config_with_ca_pem(&pem).map_err(|e| match e {
        TlsConfigError::NoCertificates { .. } => TlsConfigError::NoCertificates {
            what: path.display().to_string(),
        },
        other @ (TlsConfigError::Read { .. } | TlsConfigError::Build(_)) => other,
    })
}

/// A copy of `config` offering only `http/1.1` over ALPN (DERP's upgrade needs HTTP/1.1).
pub fn http1_only(config: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut c = config.clone();
    c.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Arc::new(c)
}

/// The name to send as SNI and verify the certificate against, from a URL host (`[::1]`
/// becomes the address `::1`).
pub fn server_name(
    host: &str,
) -> Result<ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
    ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
}

fn client_config(roots: RootCertStore) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The system's roots plus `SSL_CERT_FILE`, read once. An empty store is not an error here:
/// the handshake then fails naming the server and the untrusted certificate.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let file = std::env::var_os(ENV_CERT_FILE).map(PathBuf::from);
        let dirs_set = std::env::var_os(ENV_CERT_DIR).is_some();
        let roots = load_roots(file.as_deref(), dirs_set, &GO_CERT_DIRS.map(Path::new));
        if roots.is_empty() {
            tracing::warn!(
                "no usable root certificates in the system store; https servers will be refused"
            );
        }
        roots
    })
}

/// Go's choice on Linux: with `SSL_CERT_FILE` set (and `SSL_CERT_DIR` not), that file plus
/// the default directories; otherwise what rustls-native-certs finds (the platform store,
/// or `SSL_CERT_DIR`).
fn load_roots(file: Option<&Path>, dirs_set: bool, default_dirs: &[&Path]) -> RootCertStore {
    let mut results = Vec::new();
    match file {
        Some(file) if !dirs_set => {
            results.push(rustls_native_certs::load_certs_from_paths(Some(file), None));
            for dir in default_dirs.iter().filter(|d| d.is_dir()) {
                results.push(rustls_native_certs::load_certs_from_paths(None, Some(dir)));
            }
        }
        Some(_) | None => results.push(rustls_native_certs::load_native_certs()),
    }
    let mut roots = RootCertStore::empty();
    let (mut added, mut ignored, mut errors) = (0, 0, Vec::new());
    for r in results {
        let (a, i) = roots.add_parsable_certificates(r.certs);
        added += a;
        ignored += i;
        errors.extend(r.errors.into_iter().map(|e| e.to_string()));
    }
    tracing::debug!(added, ignored, ?errors, ssl_cert_file = ?file, "TLS root certificates loaded");
    roots
}

/// Adds every certificate in `pem`; returns how many were added.
fn add_pem(roots: &mut RootCertStore, pem: &[u8]) -> usize {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    roots.add_parsable_certificates(certs).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn ssl_cert_file_is_trusted_alongside_the_default_directories() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("extra.pem");
        std::fs::write(&file, ca_pem()).unwrap();
        let only_file = load_roots(Some(&file), false, &[]);
        assert_eq!(only_file.len(), 1);
        let other_dir = tempfile::tempdir().unwrap();
        std::fs::write(other_dir.path().join("other.pem"), ca_pem()).unwrap();
        let with_dirs = load_roots(Some(&file), false, &[other_dir.path()]);
        assert_eq!(with_dirs.len(), 2);
    }

    #[test]
    fn pem_without_certificates_is_refused() {
        let err = client_config_with_ca_pem(b"not a certificate").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the given CA PEM holds no usable PEM certificate"
        );
    }

    #[test]
    fn http1_only_offers_just_http_1_1() {
        let base = default_client_config().unwrap();
        assert!(base.alpn_protocols.is_empty());
        assert_eq!(http1_only(&base).alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn server_name_strips_ipv6_brackets() {
        assert_eq!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(std::net::Ipv6Addr::LOCALHOST.into())
        );
        assert!(matches!(
            server_name("coder.example.com").unwrap(),
            ServerName::DnsName(_)
        ));
    }
}
