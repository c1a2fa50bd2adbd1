//! The bug report of a live session holds no secret (issue #19): our engine in-process
//! (embedded, userspace) joins the testbed with private keys the test knows, logs go at
//! TRACE into the ring `up` keeps, a careless log line even prints the token, a header
//! value and both keys — and the archive `codervpn bugreport` would write is searched for
//! every one of them, in every form a key is written in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use codervpn_engine::net::derp::NodePrivateKey;
use codervpn_engine::net::disco::DiscoPrivateKey;
use codervpn_engine::session::join::{JoinOptions, TailnetConnector};
use codervpn_nebridge::diag::UpDiag;
use codervpn_nebridge::diag::bugreport::{TOP, write_archive};
use codervpn_nebridge::diag::logring::LogRing;
use codervpn_nebridge::embedded;
use codervpn_nebridge::status::StatusPublisher;
use codervpn_proto::vpn;
use codervpn_testbed::{Testbed, TestbedConfig};
use serde_json::json;
use tracing_subscriber::prelude::*;

const NODE: [u8; 32] = [0x5a; 32];
const DISCO: [u8; 32] = [0xc3; 32];
const HEADER_VALUE: &str = "header-secret-0123456789";

fn forms(key: &[u8; 32]) -> Vec<String> {
    let hex = hex::encode(key);
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let url = base64::engine::general_purpose::URL_SAFE.encode(key);
    vec![
        hex.to_uppercase(),
        hex,
        b64.trim_end_matches('=').to_owned(),
        url.trim_end_matches('=').to_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sessions_bug_report_holds_no_token_header_value_or_private_key() {
    let ring = LogRing::new(20_000);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(ring.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
        )
        .init();

    let tb = Testbed::start(TestbedConfig {
        workspaces: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let token = tb.token();
    let connector = TailnetConnector::new(JoinOptions {
        socks5: None,
        keys: Some((
            NodePrivateKey::from_bytes(NODE),
            DiscoPrivateKey::from_bytes(DISCO),
        )),
        ..Default::default()
    });
    let mut publisher = StatusPublisher::new();
    let applied = Arc::new(Mutex::new(Vec::new()));
    let diag = UpDiag {
        engine: Some(connector.diagnostics()),
        status: publisher.subscribe(),
        logs: Some(ring.clone()),
        settings: applied.clone(),
        secrets: vec![token.clone(), HEADER_VALUE.to_owned()],
        mode: "embedded".into(),
        deployment: None,
    };
    let mut tunnel = embedded::start(
        connector.clone(),
        Box::new(move |s| {
            applied
                .lock()
                .unwrap()
                .extend(codervpn_nebridge::settings::describe(s));
            Box::pin(async { Ok(()) })
        }),
    )
    .await
    .unwrap();
    let started = tunnel
        .client
        .start(vpn::StartRequest {
            tunnel_file_descriptor: -1,
            coder_url: tb.url().to_string(),
            api_token: token.clone(),
            headers: vec![vpn::start_request::Header {
                name: "X-Secret".into(),
                value: HEADER_VALUE.into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(started.success, "{}", started.error_message);

    // Traffic: the agent answers a disco ping (the ping request of `codervpn ping`), over
    // DERP or directly, once its node has arrived.
    let addr = tb.deployment().agent_summaries()[0].ip.clone();
    let mut pong = None;
    for _ in 0..50 {
        while let Some(u) = tunnel.updates.try_recv() {
            publisher.peer_update(&u, SystemTime::now());
        }
        let v = diag
            .answer(json!({ "request": "ping", "address": addr.to_string(), "timeout_ms": 2000 }))
            .await;
        if v["kind"] == "pong" {
            pong = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pong = pong.expect("no pong from the agent");
    assert!(pong["latency_ms"].as_f64().unwrap() > 0.0, "{pong}");
    assert!(
        ["direct", "derp"].contains(&pong["path"]["kind"].as_str().unwrap()),
        "{pong}"
    );

    // The careless line: everything a report must never carry.
    let (node, disco) = (forms(&NODE), forms(&DISCO));
    tracing::info!("careless: token={token} header={HEADER_VALUE} node={node:?} disco={disco:?}");

    let report = diag.answer(json!({ "request": "bugreport" })).await;
    assert_eq!(report["kind"], "bugreport", "{report}");
    let files: Vec<(String, String)> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_owned(),
                f["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.tar.gz");
    write_archive(&path, &files).unwrap();

    let mut everything = String::new();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(&path).unwrap(),
    ));
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        names.push(e.path().unwrap().display().to_string());
        e.read_to_string(&mut everything).unwrap();
    }
    for want in [
        "status.json",
        "metrics.txt",
        "network.txt",
        "settings.txt",
        "up.log",
    ] {
        assert!(names.contains(&format!("{TOP}/{want}")), "{names:?}");
    }
    assert!(
        everything.contains("careless: token=[redacted]"),
        "the line is kept, redacted"
    );
    assert!(
        everything.contains("joined the tailnet"),
        "TRACE logs are in"
    );
    assert!(!everything.contains(&token), "the token leaked");
    assert!(
        !everything.contains(HEADER_VALUE),
        "the header value leaked"
    );
    for f in node.iter().chain(&disco) {
        assert!(
            !everything.contains(f.as_str()),
            "a private key leaked as {f}"
        );
    }
    let _ = tunnel.client.stop().await;
}
