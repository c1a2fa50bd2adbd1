//! `codervpn testbed serve` prints one JSON line describing the deployment, then serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command};

/// Starts `codervpn testbed serve ARGS…` and returns it with the JSON line it printed.
fn serve(args: &[&str]) -> (Child, serde_json::Value) {
    common::spawn_json_line(
        Command::new(env!("CARGO_BIN_EXE_codervpn"))
            .args(["testbed", "serve"])
            .args(args),
    )
}

#[test]
fn serve_prints_url_token_and_agents_then_answers() {
    let (mut child, v) = serve(&["--workspaces", "2"]);
    let url = v["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(v["token"].as_str().unwrap().starts_with("testbed-"));
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    assert_eq!(agents[0]["fqdn"][0], "dev1.coder.");
    assert!(
        agents[0]["ip"]
            .as_str()
            .unwrap()
            .starts_with("fd60:627a:a42b:")
    );
    // It is really serving: a raw HTTP request to buildinfo.
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /api/v2/buildinfo HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"version\":\"v2.24.3\""), "{resp}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn serve_with_tls_prints_an_https_url_and_a_pem_ca_file() {
    let (mut child, v) = serve(&["--tls", "--workspaces", "1"]);
    let url = v["url"].as_str().unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca_file = v["ca_file"].as_str().unwrap();
    let pem = std::fs::read_to_string(ca_file).unwrap();
    assert!(
        pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{ca_file}: {pem}"
    );
    // It is the CA: trusting it, an HTTPS request to the testbed goes through.
    let trust =
        codervpn_engine::transport::tls::client_config_with_ca_file(std::path::Path::new(ca_file))
            .unwrap();
    let addr = url.trim_start_matches("https://");
    let conn = rustls::ClientConnection::new(trust, "127.0.0.1".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(addr).unwrap());
    use std::io::{Read, Write};
    write!(
        tls,
        "GET /api/v2/buildinfo HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = tls.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(
        !std::path::Path::new(ca_file).exists(),
        "the CA file goes with the testbed"
    );
}

#[test]
fn serve_prints_the_stun_address_unless_no_stun() {
    let (mut child, v) = serve(&["--workspaces", "1"]);
    let stun: std::net::SocketAddr = v["stun"].as_str().unwrap().parse().unwrap();
    assert_eq!(stun.ip().to_string(), "127.0.0.1");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    let (mut child, v) = serve(&["--workspaces", "1", "--no-stun"]);
    assert!(v.get("stun").is_none(), "{v}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn serve_with_second_region_prints_its_relay_address() {
    let (mut child, v) = serve(&["--workspaces", "0"]);
    assert!(v.get("second_region").is_none(), "{v}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    let (mut child, v) = serve(&["--workspaces", "0", "--second-region"]);
    let second: std::net::SocketAddr = v["second_region"].as_str().unwrap().parse().unwrap();
    assert_eq!(second.ip().to_string(), "127.0.0.1");
    assert!(
        !v["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", second.port()))
    );
    std::net::TcpStream::connect(second).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn serve_with_an_unknown_agent_namespace_fails_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_codervpn"))
        .args(["testbed", "serve", "--agent-netns", "codervpn-no-such-ns"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/run/netns/codervpn-no-such-ns"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "no JSON line for a testbed that did not start"
    );
}
