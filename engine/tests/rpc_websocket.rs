#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The tailnet stack over websockets (ws:// and wss://): a tokio-tungstenite server on
//! 127.0.0.1 running our dRPC server, our client dialing it; and a proxy that re-cuts
//! websocket messages at odd sizes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use codervpn_engine::session::rpc::tailnet::paths;
use codervpn_engine::session::rpc::ws::{MAX_WRITE_MESSAGE, serve_websocket};
use codervpn_engine::session::rpc::{
    DialError, DialOptions, KeepAliveConfig, MuxClient, MuxError, Requests, Router, RpcClient,
    Sink, Status, TailnetClient, WsByteStream,
};
use codervpn_proto::tailnet::{RefreshResumeTokenRequest, RefreshResumeTokenResponse};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Unary echo and bidirectional echo of `RefreshResumeTokenResponse`s.
fn echo_router() -> Router {
    Router::new()
        .unary("/t/Echo", |m: RefreshResumeTokenResponse| async move {
            Ok::<_, Status>(m)
        })
        .bidi(
            "/t/Chat",
            |mut req: Requests<RefreshResumeTokenResponse>,
             resp: Sink<RefreshResumeTokenResponse>| async move {
                while let Some(m) = req
                    .message()
                    .await
                    .map_err(|e| Status::new(0, e.to_string()))?
                {
                    resp.send(&m)
                        .await
                        .map_err(|e| Status::new(0, e.to_string()))?;
                }
                Ok(())
            },
        )
        .unary(
            paths::REFRESH_RESUME_TOKEN,
            |_: RefreshResumeTokenRequest| async {
                Ok::<_, Status>(RefreshResumeTokenResponse {
                    token: "over-websocket".into(),
                    ..Default::default()
                })
            },
        )
}

fn token(len: usize) -> RefreshResumeTokenResponse {
    RefreshResumeTokenResponse {
        token: (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect(),
        ..Default::default()
    }
}

type Seen = Arc<Mutex<Option<(String, Vec<(String, String)>)>>>;

/// Serves one websocket connection on 127.0.0.1, recording the upgrade request, or
/// refusing it with `refuse`.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn server(refuse: Option<(StatusCode, &'static str)>) -> (url::Url, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let callback = move |req: &Request, resp: Response| {
            let headers = req
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
                .collect();
            *record.lock().unwrap() = Some((req.uri().to_string(), headers));
            match refuse {
                None => Ok(resp),
                Some((status, body)) => {
                    let mut err = ErrorResponse::new(Some(body.to_owned()));
                    *err.status_mut() = status;
                    Err(err)
                }
            }
        };
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
            return;
        };
        let _ = serve_websocket(ws, Arc::new(echo_router())).await;
    });
    (base, seen)
}

fn options() -> DialOptions {
    DialOptions {
        headers: vec![
            ("Coder-Session-Token".into(), "session-token".into()),
            ("X-Proxy-Auth".into(), "one".into()),
            ("X-Proxy-Auth".into(), "two".into()),
        ],
        resume_token: Some("resume+me".into()),
        ..DialOptions::default()
    }
}

#[tokio::test]
async fn dial_sends_version_resume_token_and_headers_then_runs_calls() {
    let (base, seen) = server(None).await;
    let client = TailnetClient::dial(&base, &options()).await.unwrap();

    assert_eq!(
        client.refresh_resume_token().await.unwrap().token,
        "over-websocket"
    );
    let big = token(300 * 1024);
    let back: RefreshResumeTokenResponse = client.rpc().unary("/t/Echo", &big).await.unwrap();
    assert_eq!(back, big);
    let mut chat = client
        .rpc()
        .bidi::<RefreshResumeTokenResponse, RefreshResumeTokenResponse>("/t/Chat")
        .await
        .unwrap();
    chat.send(&token(3)).await.unwrap();
    assert_eq!(chat.message().await.unwrap().unwrap(), token(3));
    chat.close_send().await.unwrap();
    assert!(chat.message().await.unwrap().is_none());

    let (uri, headers) = seen.lock().unwrap().clone().unwrap();
    assert_eq!(uri, "/api/v2/tailnet?version=2.3&resume_token=resume%2Bme");
    let values = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(values("coder-session-token"), ["session-token"]);
    assert_eq!(values("x-proxy-auth"), ["one", "two"]);
    // No permessage-deflate offered.
    assert!(values("sec-websocket-extensions").is_empty(), "{headers:?}");
    client.close().await;
}

#[tokio::test]
async fn refused_upgrade_is_a_typed_permanent_error_with_status_and_body() {
    let body = r#"{"message":"Invalid resume token.","validations":[{"field":"resume_token","detail":"expired"}]}"#;
    let (base, _) = server(Some((StatusCode::UNAUTHORIZED, body))).await;
    let err = TailnetClient::dial(&base, &options()).await.unwrap_err();
    let DialError::Http {
        status, permanent, ..
    } = &err
    else {
        panic!("want an HTTP error, got {err:?}");
    };
    assert_eq!((*status, *permanent), (401, true));
    assert_eq!(err.status(), Some(401));
    assert!(err.is_permanent());
    assert!(err.is_stale_resume_token(), "{err}");
    let shown = err.to_string();
    assert!(shown.contains("HTTP 401 (permanent)"), "{shown}");
    assert!(
        !shown.contains("resume+me") && !shown.contains("resume%2Bme"),
        "{shown}"
    );
}

#[tokio::test]
async fn refused_upgrade_with_a_retryable_status_is_not_permanent() {
    let (base, _) = server(Some((StatusCode::SERVICE_UNAVAILABLE, "try later"))).await;
    let err = TailnetClient::dial(&base, &options()).await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert!(!err.is_permanent());
    assert!(!err.is_stale_resume_token());
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    drop(listener);
    let err = TailnetClient::dial(&base, &DialOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::Connect { .. }), "{err:?}");
    assert!(!err.is_permanent());
}

fn tls_file(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/tls")
            .join(name),
    )
    .unwrap()
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting only `roots`.
fn client_tls(roots: &[Vec<u8>]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(CertificateDer::from(r.clone())).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

/// A TLS websocket server on 127.0.0.1 with the self-signed certificate in tests/data/tls
/// (CN and SAN localhost and 127.0.0.1; made with openssl, valid until 2126).
async fn tls_server() -> url::Url {
    let cert = CertificateDer::from(tls_file("localhost.crt.der"));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls_file("localhost.key.der")));
    let config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = url::Url::parse(&format!("https://{}", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let Ok(tls) = acceptor.accept(tcp).await else {
            return;
        };
        let ws = tokio_tungstenite::accept_async(tls).await.unwrap();
        let _ = serve_websocket(ws, Arc::new(echo_router())).await;
    });
    base
}

#[tokio::test]
async fn wss_dial_verifies_the_server_against_the_given_roots() {
    let base = tls_server().await;
    let opts = DialOptions {
        tls: Some(client_tls(&[tls_file("localhost.crt.der")])),
        ..options()
    };
    let client = TailnetClient::dial(&base, &opts).await.unwrap();
    assert_eq!(
        client.refresh_resume_token().await.unwrap().token,
        "over-websocket"
    );
    client.close().await;
}

#[tokio::test]
async fn wss_with_an_untrusted_certificate_is_a_retryable_tls_error() {
    let base = tls_server().await;
    let opts = DialOptions {
        tls: Some(client_tls(&[])),
        ..options()
    };
    let err = TailnetClient::dial(&base, &opts).await.unwrap_err();
    assert!(matches!(err, DialError::Tls { .. }), "{err:?}");
    assert!(!err.is_permanent());
    let shown = err.to_string();
    assert!(
        shown.starts_with("TLS handshake with 127.0.0.1 for wss://127.0.0.1:"),
        "{shown}"
    );
    assert!(shown.contains("UnknownIssuer"), "{shown}");
}

/// Forwards binary messages, re-cut at the sizes in `cuts` (cycled); records the largest
/// message it received.
async fn recut<S, T>(
    mut from: futures_util::stream::SplitStream<WebSocketStream<S>>,
    mut to: futures_util::stream::SplitSink<WebSocketStream<T>, Message>,
    cuts: &'static [usize],
    largest: Arc<Mutex<usize>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut cut = cuts.iter().copied().cycle();
    while let Some(Ok(msg)) = from.next().await {
        let Message::Binary(data) = msg else {
            assert!(
                matches!(msg, Message::Close(_)),
                "non-binary message {msg:?}"
            );
            break;
        };
        {
            let mut l = largest.lock().unwrap();
            *l = (*l).max(data.len());
        }
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = cut.next().unwrap().min(rest.len());
            if to
                .send(Message::Binary(rest[..n].to_vec().into()))
                .await
                .is_err()
            {
                return;
            }
            rest = &rest[n..];
        }
    }
    let _ = to.close().await;
}

#[tokio::test]
async fn message_boundaries_need_not_match_yamux_frames() {
    let (c_io, p1_io) = tokio::io::duplex(64 * 1024);
    let (p2_io, s_io) = tokio::io::duplex(64 * 1024);
    let client_ws = WebSocketStream::from_raw_socket(c_io, Role::Client, None).await;
    let proxy_in = WebSocketStream::from_raw_socket(p1_io, Role::Server, None).await;
    let proxy_out = WebSocketStream::from_raw_socket(p2_io, Role::Client, None).await;
    let server_ws = WebSocketStream::from_raw_socket(s_io, Role::Server, None).await;
    tokio::spawn(serve_websocket(server_ws, Arc::new(echo_router())));

    let (in_sink, in_stream) = proxy_in.split();
    let (out_sink, out_stream) = proxy_out.split();
    let from_client = Arc::new(Mutex::new(0));
    let from_server = Arc::new(Mutex::new(0));
    tokio::spawn(recut(
        in_stream,
        out_sink,
        &[1, 5, 11, 3, 4099, 7, 13],
        from_client.clone(),
    ));
    tokio::spawn(recut(
        out_stream,
        in_sink,
        &[2, 9, 3, 1, 16411, 6],
        from_server.clone(),
    ));

    let client = RpcClient::new(MuxClient::start(WsByteStream::new(client_ws)));
    for len in [0, 1, 100, 70_000] {
        let m = token(len);
        let back: RefreshResumeTokenResponse = client.unary("/t/Echo", &m).await.unwrap();
        assert_eq!(back, m);
    }
    let mut chat = client
        .bidi::<RefreshResumeTokenResponse, RefreshResumeTokenResponse>("/t/Chat")
        .await
        .unwrap();
    for len in [5, 40_000, 17] {
        chat.send(&token(len)).await.unwrap();
        assert_eq!(chat.message().await.unwrap().unwrap(), token(len));
    }
    chat.close_send().await.unwrap();
    assert!(chat.message().await.unwrap().is_none());
    let client_max = *from_client.lock().unwrap();
    assert!(
        client_max > 0 && client_max <= MAX_WRITE_MESSAGE,
        "{client_max}"
    );
    client.mux().close().await;
}

fn quick_keepalive() -> Option<KeepAliveConfig> {
    Some(KeepAliveConfig {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
    })
}

#[tokio::test(start_paused = true)]
async fn unanswered_ping_ends_the_session() {
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let client_ws = WebSocketStream::from_raw_socket(c_io, Role::Client, None).await;
    // A peer that never reads, so never answers.
    let _silent = WebSocketStream::from_raw_socket(s_io, Role::Server, None).await;
    let mux = MuxClient::start(WsByteStream::with_keepalive(client_ws, quick_keepalive()));
    let err = mux.ended().await.unwrap_err();
    let MuxError::Session(text) = &err else {
        panic!("want a session error, got {err:?}");
    };
    assert!(text.contains("did not answer a ping within 1s"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn answered_pings_keep_a_quiet_session_alive() {
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let client_ws = WebSocketStream::from_raw_socket(c_io, Role::Client, None).await;
    let server_ws = WebSocketStream::from_raw_socket(s_io, Role::Server, None).await;
    tokio::spawn(serve_websocket(server_ws, Arc::new(echo_router())));
    let mux = MuxClient::start(WsByteStream::with_keepalive(client_ws, quick_keepalive()));
    let client = RpcClient::new(mux.clone());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!mux.is_ended());
    let back: RefreshResumeTokenResponse = client.unary("/t/Echo", &token(5)).await.unwrap();
    assert_eq!(back, token(5));
}

/// A wake's probe (issue #14): a silent peer is found within the probe's 3 s, not the
/// keep-alive's 30 + 10 s; a live one answers and the session goes on.
#[tokio::test(start_paused = true)]
async fn a_probe_finds_a_silent_peer_within_its_deadline() {
    use codervpn_engine::session::rpc::ProbeHandle;
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let client_ws = WebSocketStream::from_raw_socket(c_io, Role::Client, None).await;
    let _silent = WebSocketStream::from_raw_socket(s_io, Role::Server, None).await;
    let probe = ProbeHandle::default();
    let mux = MuxClient::start(
        WsByteStream::with_keepalive(client_ws, Some(KeepAliveConfig::default()))
            .with_probe(Some(probe.clone())),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!mux.is_ended());
    let start = tokio::time::Instant::now();
    probe.probe(Duration::from_secs(3));
    let err = mux.ended().await.unwrap_err();
    assert!(
        start.elapsed() <= Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(
        format!("{err:?}").contains("did not answer a ping within 3s"),
        "{err:?}"
    );

    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let client_ws = WebSocketStream::from_raw_socket(c_io, Role::Client, None).await;
    let server_ws = WebSocketStream::from_raw_socket(s_io, Role::Server, None).await;
    tokio::spawn(serve_websocket(server_ws, Arc::new(echo_router())));
    let probe = ProbeHandle::default();
    let mux = MuxClient::start(
        WsByteStream::with_keepalive(client_ws, Some(KeepAliveConfig::default()))
            .with_probe(Some(probe.clone())),
    );
    probe.probe(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!mux.is_ended(), "a live peer answered the probe");
}
