//! HTTPS for the testbed (`TestbedConfig { tls: true }`): a CA and a leaf certificate for
//! `127.0.0.1`, `::1` and `localhost`, made fresh at every start, and a listener that runs
//! TLS handshakes off the accept path. ALPN offers `http/1.1` only: the DERP and websocket
//! upgrades need HTTP/1.1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// The names the leaf certificate is valid for.
pub const LEAF_NAMES: [&str; 3] = ["127.0.0.1", "::1", "localhost"];
/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 64;

/// A generated certificate authority and the server configuration of a leaf it signed.
pub struct TestCa {
    /// The CA certificate, PEM (what clients must trust).
    pub ca_pem: String,
    /// Serves the leaf (chain: leaf, CA) with ALPN `http/1.1`.
    pub server: Arc<rustls::ServerConfig>,
}

/// Certificate or TLS configuration failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot generate the testbed certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot build the testbed's TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl TestCa {
    /// A fresh CA, and a leaf for `names` (IP addresses become IP SANs).
    pub fn generate(names: &[&str]) -> Result<Self, TlsSetupError> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "codervpn testbed CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf_key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut leaf = CertificateParams::new(names)?;
        leaf.distinguished_name
            .push(DnType::CommonName, "codervpn testbed");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let chain = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        })
    }
}

/// The CA of an HTTPS testbed, in memory and on disk (removed when dropped).
pub(crate) struct CaFiles {
    pub(crate) ca_pem: String,
    pub(crate) ca_file: PathBuf,
    /// Trusts the system roots and this CA (for the testbed's own agents and for tests).
    pub(crate) client: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

impl CaFiles {
    /// A fresh CA and leaf for [`LEAF_NAMES`], the CA written to a temporary directory;
    /// also returns the server configuration. Errors are one line, saying which step failed.
    pub(crate) fn create() -> Result<(Self, Arc<rustls::ServerConfig>), String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        let ca = TestCa::generate(&LEAF_NAMES).map_err(|e| fail("certificates", &e))?;
        let dir = tempfile::Builder::new()
            .prefix("codervpn-testbed-")
            .tempdir()
            .map_err(|e| fail("creating a temporary directory", &e))?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem)
            .map_err(|e| fail(&format!("writing {}", ca_file.display()), &e))?;
        let client =
            codervpn_engine::transport::tls::client_config_with_ca_pem(ca.ca_pem.as_bytes())
                .map_err(|e| fail("client configuration", &e))?;
        let files = Self {
            ca_pem: ca.ca_pem,
            ca_file,
            client,
            _dir: dir,
        };
        Ok((files, ca.server))
    }
}

/// An `axum::serve` listener yielding TLS streams. Handshakes run in their own tasks, so a
/// slow or broken client holds up nobody else.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` (in a background task that ends with the listener) and completes
    /// TLS with `config`.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let addr = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = tcp.accept() => r,
                    () = tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "testbed accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
