//! The controller's dial loop against a local server that refuses the websocket upgrade,
//! on tokio's paused clock: the backoff's steps are read off the virtual time of each
//! attempt, with no sleeping.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::*;

/// One upgrade attempt as the server saw it.
#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    /// The request line (`GET /api/v2/tailnet?version=2.3&resume_token=… HTTP/1.1`).
    line: String,
}

/// A server answering every request with what `answer` returns for its request line.
async fn refusing_server(
    answer: impl Fn(&str) -> String + Send + Sync + 'static,
) -> (Url, Arc<Mutex<Vec<Attempt>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head);
            let line = text.lines().next().unwrap_or_default().to_owned();
            let reply = answer(&line);
            log.lock().unwrap().push(Attempt {
                at: Instant::now(),
                line,
            });
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    });
    (url, seen)
}

fn reply(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

struct Running {
    first: oneshot::Receiver<FirstDial>,
    status: watch::Receiver<ControlStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _events: mpsc::Receiver<Event>,
}

fn start(url: Url, resume_token: Option<&str>) -> Running {
    let (events_tx, events) = mpsc::channel(16);
    let (first_tx, first) = oneshot::channel();
    let (status_tx, status) = watch::channel(ControlStatus::default());
    let (stop, stop_rx) = watch::channel(false);
    let opts = DialOptions {
        resume_token: resume_token.map(str::to_owned),
        ..DialOptions::default()
    };
    let task = tokio::spawn(run(
        url, opts, [0; 16], events_tx, first_tx, status_tx, stop_rx,
    ));
    Running {
        first,
        status,
        stop,
        task,
        _events: events,
    }
}

/// Waits (up to a minute of virtual time) until the server saw `n` attempts.
async fn attempts(seen: &Arc<Mutex<Vec<Attempt>>>, n: usize) -> Vec<Attempt> {
    for _ in 0..60_000 {
        {
            let s = seen.lock().unwrap();
            if s.len() >= n {
                return s.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("only {} attempts", seen.lock().unwrap().len());
}

#[tokio::test(start_paused = true)]
async fn retryable_refusals_back_off_from_50_ms_doubling_to_10_s() {
    let (url, seen) = refusing_server(|_| reply("503 Service Unavailable", "")).await;
    let mut c = start(url, None);
    let got = attempts(&seen, 11).await;
    let gaps: Vec<u128> = got
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_millis())
        .collect();
    // Each gap is the backoff (the attempt itself takes no virtual time), give or take the
    // 1 ms polling of this test.
    let want = [50, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000];
    for (g, w) in gaps.iter().zip(want) {
        assert!(g.abs_diff(w) <= 2, "gaps {gaps:?}, want {want:?}");
    }
    assert!(c.status.borrow().failed_dials >= 10);
    assert!(
        c.status
            .borrow()
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("503")),
        "{:?}",
        c.status.borrow()
    );
    assert!(
        c.first.try_recv().is_err(),
        "a retryable error does not fail start"
    );
    c.stop.send(true).unwrap();
    c.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_on_the_first_dial_fails_start_without_retrying() {
    let (url, seen) =
        refusing_server(|_| reply("401 Unauthorized", r#"{"message":"Unauthorized."}"#)).await;
    let c = start(url, None);
    let first = c.first.await.unwrap();
    let err = first.unwrap_err();
    assert!(err.contains("the session token was rejected"), "{err}");
    c.task.await.unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "no retry after a permanent error"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_resume_token_is_dropped_and_the_redial_is_immediate() {
    let (url, seen) = refusing_server(|line| {
        if line.contains("resume_token=") {
            reply(
                "401 Unauthorized",
                r#"{"message":"Invalid resume token.","validations":[{"field":"resume_token","detail":"expired"}]}"#,
            )
        } else {
            reply("503 Service Unavailable", "")
        }
    })
    .await;
    let c = start(url, Some("old-token"));
    let got = attempts(&seen, 2).await;
    assert!(got[0].line.contains("resume_token=old-token"), "{got:?}");
    assert!(!got[1].line.contains("resume_token"), "{got:?}");
    assert_eq!(
        got[1].at, got[0].at,
        "no backoff before the redial without the token"
    );
    c.stop.send(true).unwrap();
    c.task.await.unwrap();
}
