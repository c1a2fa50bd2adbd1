//! DERP over TLS (tailnet.md §13.3 "TLS"): our DERP server behind a rustls listener with a
//! generated CA; the client dials `https://…/derp` with the plain upgrade and with `wss`,
//! checks the certificate against the host (or the caller's `CertName`) and offers only
//! `http/1.1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use codervpn_engine::net::derp::ConnectError;
use codervpn_engine::net::derp::{
    ClientEvent, ConnectOptions, DerpConnection, DerpEvent, DerpServer, DerpTransport,
    NodePrivateKey, NodePublicKey, connect_with,
};
use codervpn_engine::transport::TransportError;
use codervpn_engine::transport::tls;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use url::Url;

const T: Duration = Duration::from_secs(10);

/// A DERP server on loopback TLS whose leaf is valid for `names`; returns the `https` URL
/// (host 127.0.0.1), a client configuration trusting the CA, and the ALPN the server saw.
async fn tls_server(
    names: &[&str],
) -> (
    Url,
    Arc<rustls::ClientConfig>,
    oneshot::Receiver<Option<Vec<u8>>>,
) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    server_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("https://{}/derp", listener.local_addr().unwrap())).unwrap();
    let derp = DerpServer::new(NodePrivateKey::generate());
    let (alpn_tx, alpn_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut alpn_tx = Some(alpn_tx);
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(stream) = acceptor.accept(tcp).await else {
                continue;
            };
            if let Some(tx) = alpn_tx.take() {
                let _ = tx.send(stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
            }
            let derp = derp.clone();
            tokio::spawn(async move { derp.serve_http(stream).await });
        }
    });
    let client = tls::client_config_with_ca_pem(ca_cert.pem().as_bytes()).unwrap();
    (url, client, alpn_rx)
}

fn options(transport: DerpTransport, client: &Arc<rustls::ClientConfig>) -> ConnectOptions {
    ConnectOptions {
        transport,
        tls: Some(client.clone()),
        ..ConnectOptions::default()
    }
}

async fn connected(url: &Url, opts: ConnectOptions) -> (DerpConnection, NodePublicKey) {
    let key = NodePrivateKey::generate();
    let public = key.public_key();
    let headers = vec![("Coder-Session-Token".to_owned(), "secret".to_owned())];
    let mut conn = tokio::time::timeout(T, connect_with(url, &headers, key, opts))
        .await
        .unwrap()
        .unwrap();
    next_matching(&mut conn, |e| {
        matches!(e, DerpEvent::Relay(ClientEvent::Connected { .. }))
    })
    .await;
    (conn, public)
}

async fn next_matching(conn: &mut DerpConnection, want: impl Fn(&DerpEvent) -> bool) -> DerpEvent {
    tokio::time::timeout(T, async {
        loop {
            let e = conn.events.recv().await.expect("event channel closed");
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

async fn exchange(url: &Url, a_opts: ConnectOptions, b_opts: ConnectOptions) {
    let (mut a, a_key) = connected(url, a_opts).await;
    let (mut b, b_key) = connected(url, b_opts).await;
    relay(&a, a_key, &mut b, b_key, b"over tls").await;
    relay(&b, b_key, &mut a, a_key, b"and back").await;
}

/// `from` sends `data` to `to_key`; `to` receives it from `from_key`.
async fn relay(
    from: &DerpConnection,
    from_key: NodePublicKey,
    to: &mut DerpConnection,
    to_key: NodePublicKey,
    data: &'static [u8],
) {
    from.handle
        .send(to_key, Bytes::from_static(data))
        .await
        .unwrap();
    let got = next_matching(to, |e| {
        matches!(e, DerpEvent::Relay(ClientEvent::Packet { .. }))
    })
    .await;
    let DerpEvent::Relay(ClientEvent::Packet { from, data: got }) = got else {
        unreachable!()
    };
    assert_eq!((from, &got[..]), (from_key, data));
}

#[tokio::test]
async fn clients_exchange_packets_over_https_upgrade_offering_only_http1() {
    let (url, client, alpn) = tls_server(&["127.0.0.1"]).await;
    let opts = || options(DerpTransport::Upgrade, &client);
    exchange(&url, opts(), opts()).await;
    assert_eq!(alpn.await.unwrap().as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn clients_exchange_packets_over_wss() {
    let (url, client, _) = tls_server(&["127.0.0.1"]).await;
    let opts = || options(DerpTransport::WebSocket, &client);
    exchange(&url, opts(), opts()).await;
}

#[tokio::test]
async fn certificate_for_another_name_is_refused_naming_the_host() {
    let (url, client, _) = tls_server(&["derp.example.com"]).await;
    let key = NodePrivateKey::generate();
    let err = connect_with(&url, &[], key, options(DerpTransport::Upgrade, &client))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Transport {
                source: TransportError::Tls { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(text.contains("not valid for name"), "{text}");
}

#[tokio::test]
async fn cert_name_replaces_the_host_as_the_expected_name() {
    let (url, client, _) = tls_server(&["derp.example.com"]).await;
    let opts = || ConnectOptions {
        server_name: Some("derp.example.com".into()),
        ..options(DerpTransport::Upgrade, &client)
    };
    exchange(&url, opts(), opts()).await;
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let (url, _client, _) = tls_server(&["127.0.0.1"]).await;
    let key = NodePrivateKey::generate();
    let opts = options(
        DerpTransport::WebSocket,
        &tls::default_client_config().unwrap(),
    );
    let err = connect_with(&url, &[], key, opts).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("127.0.0.1") && text.contains("UnknownIssuer"),
        "{text}"
    );
}
