//! `codervpn vpn-daemon run` as a child process, over real pipes (dylib-abi-and-compat.md
//! §2, codervpn-protocol.md §10).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::process::Command;

use codervpn_proto::vpn::{self, manager_message, tunnel_message};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_speaks_the_whole_exchange_and_exits_after_stop() {
    let p = pipes();
    let child = spawn_daemon(p.tunnel_read, p.tunnel_write, &daemon_args(), &[]);
    let mut conn = manager(p.manager_read, p.manager_write).await;
    full_exchange(&mut conn).await;
    let (status, stderr) = wait(child);
    assert!(status.success(), "{status:?} {stderr}");
    assert!(stderr.contains("tunnel stopped by the manager"), "{stderr}");
}

/// The tunnel-only binary takes the same command line and speaks the same exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_only_binary_is_the_same_daemon() {
    let p = pipes();
    let child = spawn_daemon_binary(
        env!("CARGO_BIN_EXE_codervpn-daemon"),
        p.tunnel_read,
        p.tunnel_write,
        &daemon_args(),
        &[],
    );
    let mut conn = manager(p.manager_read, p.manager_write).await;
    full_exchange(&mut conn).await;
    let (status, stderr) = wait(child);
    assert!(status.success(), "{status:?} {stderr}");
    assert!(stderr.contains("tunnel stopped by the manager"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_takes_its_descriptors_from_the_environment() {
    let p = pipes();
    let env = [
        ("CODER_VPN_DAEMON_RPC_READ_FD", "3"),
        ("CODER_VPN_DAEMON_RPC_WRITE_FD", "4"),
    ];
    let child = spawn_daemon(p.tunnel_read, p.tunnel_write, &[], &env);
    let mut conn = manager(p.manager_read, p.manager_write).await;
    full_exchange(&mut conn).await;
    assert!(wait(child).0.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_exits_when_the_manager_closes_the_pipe() {
    let p = pipes();
    let child = spawn_daemon(p.tunnel_read, p.tunnel_write, &daemon_args(), &[]);
    let conn = manager(p.manager_read, p.manager_write).await;
    drop(conn);
    let (status, stderr) = wait(child);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("manager went away"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_stops_gracefully_on_sigterm() {
    let p = pipes();
    let child = spawn_daemon(p.tunnel_read, p.tunnel_write, &daemon_args(), &[]);
    let mut conn = manager(p.manager_read, p.manager_write).await;
    // A round trip proves the tunnel is serving before the signal arrives.
    conn.handle().request(get_peer_update()).await.unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    drain(&mut conn).await;
    let (status, stderr) = wait(child);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("tunnel ended on signal"), "{stderr}");
}

#[test]
fn daemon_refuses_bad_descriptor_arguments() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--rpc-read-fd", "-1", "--rpc-write-fd", "4"],
            "must both be >= 0",
        ),
        (
            &["--rpc-read-fd", "3", "--rpc-write-fd", "3"],
            "must differ",
        ),
        (
            &["--rpc-read-fd", "200", "--rpc-write-fd", "201"],
            "fd 200 is not open",
        ),
        (&["--rpc-read-fd", "3"], "--rpc-write-fd"),
    ];
    for (args, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_codervpn"))
            .args(["vpn-daemon", "run"])
            .args(args)
            .env_remove("CODER_VPN_DAEMON_RPC_WRITE_FD")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

#[test]
fn daemon_refuses_a_descriptor_that_is_not_a_pipe() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let p = pipes();
    let child = spawn_daemon(
        p.tunnel_read,
        std::io::PipeWriter::from(std::os::fd::OwnedFd::from(file)),
        &daemon_args(),
        &[],
    );
    drop(p.tunnel_write);
    let (status, stderr) = wait(child);
    assert!(!status.success());
    assert!(stderr.contains("neither a pipe nor a socket"), "{stderr}");
}

/// A raw manager: writes bytes by hand, reads whatever the daemon sends until EOF.
fn raw_session(input: &[u8]) -> (Vec<u8>, std::process::ExitStatus, String) {
    let p = pipes();
    let child = spawn_daemon(p.tunnel_read, p.tunnel_write, &daemon_args(), &[]);
    let mut w = p.manager_write;
    let _ = w.write_all(input);
    let mut r = p.manager_read;
    let mut out = Vec::new();
    let reader = std::thread::spawn(move || {
        let _ = r.read_to_end(&mut out);
        out
    });
    let (status, stderr) = wait(child);
    drop(w);
    (reader.join().unwrap(), status, stderr)
}

// checklist #20
#[test]
fn corrupt_frame_closes_the_pipe_and_the_daemon_exits() {
    let mut input = b"codervpn manager 1.3\n".to_vec();
    input.extend_from_slice(&[0, 0, 0, 10]);
    input.extend_from_slice(&[0; 10]);
    let (out, status, stderr) = raw_session(&input);
    assert!(
        out.starts_with(b"codervpn tunnel 1.3\n"),
        "{out:?} {stderr}"
    );
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("failed to unmarshal"), "{stderr}");
}

// checklist #21
#[test]
fn oversize_frame_closes_the_pipe_and_the_daemon_exits() {
    let mut input = b"codervpn manager 1.3\n".to_vec();
    input.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    let (_, status, stderr) = raw_session(&input);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("exceeds max"), "{stderr}");
}

// checklist #6, #9
#[test]
fn bad_headers_end_the_daemon_with_handshake_errors() {
    let (out, status, stderr) = raw_session(&[b'a'; 768]);
    assert_eq!(out, b"codervpn tunnel 1.3\n");
    assert!(!status.success());
    assert!(stderr.contains("handshake failed"), "{stderr}");
    let (_, status, stderr) = raw_session(b"codervpn manager 2.0,3.0\n");
    assert!(!status.success());
    assert!(
        stderr.contains("validate header (codervpn manager 2.0,3.0): "),
        "{stderr}"
    );
}

#[test]
fn version_json_reports_the_matching_coder_release() {
    let out = Command::new(env!("CARGO_BIN_EXE_codervpn"))
        .args(["version", "--output=json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], codervpn_engine::CODER_VERSION);
    assert!(v["version"].as_str().unwrap().starts_with('v'));
}

/// Starts a daemon (userspace mode) against `tb` with `env`, accepting every network
/// settings request; returns the StartResponse (the daemon is stopped and reaped).
async fn start_against(tb: &codervpn_testbed::Testbed, env: &[(&str, &str)]) -> vpn::StartResponse {
    let p = pipes();
    let child = spawn_daemon(p.tunnel_read, p.tunnel_write, &daemon_args(), env);
    let conn = manager(p.manager_read, p.manager_write).await;
    let (handle, mut incoming) = conn.into_parts();
    let h = handle.clone();
    tokio::spawn(async move {
        while let Some(m) = incoming.recv().await {
            if let codervpn_proto::Incoming::Request { id, .. } = m {
                let ok = msg(manager_message::Msg::NetworkSettings(
                    vpn::NetworkSettingsResponse {
                        success: true,
                        error_message: String::new(),
                    },
                ));
                let _ = h.reply(id, ok).await;
            }
        }
    });
    let req = vpn::StartRequest {
        tunnel_file_descriptor: -1,
        coder_url: tb.url().to_string(),
        api_token: tb.token(),
        ..Default::default()
    };
    let reply = tokio::time::timeout(T, handle.request(msg(manager_message::Msg::Start(req))))
        .await
        .unwrap()
        .unwrap();
    let Some(tunnel_message::Msg::Start(start)) = reply.msg else {
        panic!("not a StartResponse: {reply:?}")
    };
    let _ = handle.request(stop()).await;
    drop(handle);
    let (status, stderr) = wait(child);
    assert!(status.success(), "{stderr}");
    start
}

/// A one-workspace testbed serving HTTPS with its own CA.
async fn https_testbed() -> codervpn_testbed::Testbed {
    let config = codervpn_testbed::TestbedConfig {
        workspaces: 1,
        tls: true,
        ..Default::default()
    };
    codervpn_testbed::Testbed::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_trusts_the_ca_named_by_ssl_cert_file() {
    let tb = https_testbed().await;
    let ca_file = tb.ca_file().unwrap().to_str().unwrap().to_owned();
    let start = start_against(&tb, &[("SSL_CERT_FILE", &ca_file)]).await;
    assert!(start.success, "{}", start.error_message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_without_the_ca_refuses_the_testbed_certificate() {
    let tb = https_testbed().await;
    let start = start_against(&tb, &[]).await;
    assert!(!start.success);
    assert!(
        start.error_message.contains("UnknownIssuer"),
        "{}",
        start.error_message
    );
}
