//! Tests of the REST calls: DERP map rewriting, error texts, a GET lost on a used
//! connection, redirects kept within the origin, the body cap.
use super::*;

#[test]
fn embedded_relay_is_rewritten_to_the_access_url_and_others_are_not() {
    let raw: RawDerpMap = serde_json::from_value(serde_json::json!({
        "Regions": {
            "999": {"EmbeddedRelay": true, "RegionID": 999, "RegionName": "Coder",
                     "Nodes": [{"Name": "999a", "RegionID": 999, "HostName": "old"},
                               {"Name": "stun", "RegionID": 999, "HostName": "stun.example", "STUNOnly": true}]},
            "1": {"EmbeddedRelay": false, "RegionID": 1, "Nodes": [{"Name": "1a", "RegionID": 1, "HostName": "derp1.example"}]}
        }
    }))
    .unwrap();
    let mut map = raw.into_proto();
    rewrite_embedded_relay(&mut map, &Url::parse("http://127.0.0.1:3000/").unwrap());
    let n = &map.regions[&999].nodes[0];
    assert_eq!(
        (n.host_name.as_str(), n.derp_port, n.force_http),
        ("127.0.0.1", 3000, true)
    );
    assert_eq!(map.regions[&999].nodes[1].host_name, "stun.example");
    assert_eq!(map.regions[&1].nodes[0].host_name, "derp1.example");
    assert_eq!(derp_url(n).unwrap().as_str(), "http://127.0.0.1:3000/derp");
    assert_eq!(
        derp_url(&map.regions[&1].nodes[0]).unwrap().as_str(),
        "https://derp1.example/derp"
    );
    rewrite_embedded_relay(&mut map, &Url::parse("https://coder.example.com/").unwrap());
    let n = &map.regions[&999].nodes[0];
    assert_eq!((n.derp_port, n.force_http), (443, false));
}

#[test]
fn coder_error_bodies_become_one_line() {
    assert_eq!(
        error_text(br#"{"message":"Invalid session token.","detail":"nope"}"#),
        "Invalid session token. nope"
    );
    assert_eq!(error_text(b"  plain text \n"), "plain text");
}

/// A server that answers its first request with keep-alive, then reads the second on
/// the same connection and closes it unanswered (as a proxy that drops idle clients
/// does); every later connection is answered. The second `me()` must still succeed.
#[tokio::test]
async fn a_get_lost_on_a_kept_alive_connection_is_sent_once_more() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let body = ME;
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let first = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                // Every request fits one read here (a GET without a body).
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {
                    if !first {
                        let _ = s.write_all(answer.as_bytes()).await;
                        continue;
                    }
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    // Second request on the first connection: read, drop the connection.
                    let _ = s.read(&mut buf).await;
                    return;
                }
            });
        }
    });
    let tls = crate::transport::tls::default_client_config().unwrap();
    let api = Api::new(&base, "token", &[], &tls).unwrap();
    assert_eq!(api.me().await.unwrap().username, "testy");
    assert_eq!(api.me().await.unwrap().username, "testy", "sent once more");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A loopback HTTP server answering every request with `answer(request head)` and closing;
/// returns its base URL and the request heads it saw.
async fn serve(
    answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
) -> (Url, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let (log, answer) = (log.clone(), answer.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let reply = answer(&head);
                log.lock().unwrap().push(head);
                let _ = s.write_all(&reply).await;
            });
        }
    });
    (base, seen)
}

fn json_answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const ME: &str = r#"{"id":"9f6b6e0e-3c8e-4a9e-8c1d-2b3c4d5e6f70","username":"testy"}"#;

fn api(base: &Url) -> Api {
    let tls = crate::transport::tls::default_client_config().unwrap();
    Api::new(base, "s3cr3t-token", &[], &tls).unwrap()
}

/// A 302 from the Coder URL to another origin (here another port) is not followed: the
/// other server never sees a request, so never the token; the error names both places.
#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed_and_the_token_stays_home() {
    let (elsewhere, elsewhere_seen) = serve(|_| json_answer(ME)).await;
    let target = elsewhere.join("api/v2/users/me").unwrap();
    let (base, seen) = serve(move |_| {
        format!("HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes()
    })
    .await;
    let err = api(&base).me().await.unwrap_err();
    assert!(matches!(err, ApiError::CrossOriginRedirect { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(elsewhere.authority()), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(seen.lock().unwrap()[0].contains("s3cr3t-token"));
    assert!(
        elsewhere_seen.lock().unwrap().is_empty(),
        "the other origin was asked"
    );
}

/// A redirect within the origin is followed, token and all.
#[tokio::test]
async fn a_redirect_within_the_origin_is_followed() {
    let (base, seen) = serve(|head| {
        if head.starts_with("GET /api/v2/users/me ") {
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /api/v2/users/me2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        } else {
            json_answer(ME)
        }
    })
    .await;
    assert_eq!(api(&base).me().await.unwrap().username, "testy");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].starts_with("GET /api/v2/users/me2 ") && seen[1].contains("s3cr3t-token"));
}

/// An answer larger than the cap is refused instead of read into memory.
#[tokio::test]
async fn an_answer_over_the_size_cap_is_refused() {
    let (base, _) = serve(|_| {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            MAX_RESPONSE + 1
        )
        .into_bytes();
        r.resize(r.len() + MAX_RESPONSE + 1, b' ');
        r
    })
    .await;
    let err = api(&base).me().await.unwrap_err();
    assert!(matches!(err, ApiError::TooLarge { .. }), "{err}");
}
