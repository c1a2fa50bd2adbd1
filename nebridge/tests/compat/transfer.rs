//! Transfers the testbed will not make: oversized, dishonest, stalled and redirected
//! answers.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_announced_larger_than_the_cap_is_refused() {
    let mut env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let mut bytes = payload("oversized");
    bytes.resize(2 * MIB as usize, 7);
    env.publish_signed(&bytes, "2.24.3");
    env.config.max_bytes = MIB;

    let err = env.refused(&bytes).await;

    assert_eq!(
        err,
        format!(
            "{} is too large: {} bytes exceeds the {MIB}-byte limit",
            env.library_url(),
            2 * MIB
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_without_an_honest_length_is_cut_off_at_the_cap() {
    let mut env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let server = raw_server(AfterAnswer::Close, |path| {
        if path == "/api/v2/buildinfo" {
            return ok_json(r#"{"version":"v2.24.3"}"#);
        }
        // No Content-Length: the body ends when the connection closes.
        let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        r.resize(r.len() + 3 * MIB as usize, 0);
        r
    })
    .await;
    env.config.server = server.clone();
    env.config.max_bytes = MIB;

    let err = env.refused(b"").await;

    assert!(
        err.starts_with(&format!("{server}bin/{} is too large: ", library_name())),
        "{err}"
    );
    assert!(
        err.ends_with(&format!("exceeds the {MIB}-byte limit")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_that_stops_arriving_hits_the_idle_timeout() {
    let mut env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let server = raw_server(AfterAnswer::Stall, |path| {
        if path == "/api/v2/buildinfo" {
            return ok_json(r#"{"version":"v2.24.3"}"#);
        }
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec()
    })
    .await;
    env.config.server = server.clone();
    env.config.idle_timeout = Duration::from_millis(300);

    let err = env.refused(b"").await;

    assert_eq!(
        err,
        format!("{server}bin/{}: no data for 300ms", library_name())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_to_another_origin_is_not_followed() {
    let mut env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = payload("redirect");
    env.publish_signed(&bytes, "2.24.3");
    let target = env.library_url();
    let location = target.clone();
    let server = raw_server(AfterAnswer::Close, move |path| {
        if path == "/api/v2/buildinfo" {
            return ok_json(r#"{"version":"v2.24.3"}"#);
        }
        format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes()
    })
    .await;
    env.config.server = server.clone();

    let err = env.refused(&bytes).await;

    assert_eq!(
        err,
        format!(
            "{server}bin/{} redirected to {target}, another origin; refusing to follow",
            library_name()
        )
    );
    assert_eq!(env.testbed.bin_bodies_served(&library_name()), 0);
}

fn ok_json(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a [`raw_server`] does after writing its answer.
#[derive(Clone, Copy, PartialEq)]
enum AfterAnswer {
    Close,
    /// Keep the connection open, silent, for a minute.
    Stall,
}

/// A bare HTTP/1.1 server on loopback: each request gets `respond(path)`, then `after`.
/// For answers the testbed will not give: redirects, bodies without a length, stalls.
async fn raw_server(
    after: AfterAnswer,
    respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
) -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let _ = stream.write_all(&respond(&path)).await;
                if after == AfterAnswer::Stall {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}
