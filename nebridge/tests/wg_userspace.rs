//! `codervpn wg up --userspace`: the tunnel without a TUN and without root.
//!
//! - Command-line rules and a clean stop on SIGTERM, run from this process.
//! - `tests/netns/userspace.sh`: host a runs the userspace tunnel (as nobody, no TUN in its
//!   namespace) with SOCKS5 and a port forward; host b runs wireguard-go or our TUN mode and
//!   an HTTP server; a 10 MB fetch through SOCKS5 and through the forward must match its
//!   SHA-256. Needs root, iproute2, wireguard-tools, python3, wireguard-go for that case
//!   (curl is used when installed, a Python client otherwise).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_codervpn");
/// A config with one address and no peers (key generated once, not secret).
const CONFIG: &str = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.202.0.1/24\n";

fn config_file(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("codervpn-{name}-{}.conf", std::process::id()));
    std::fs::write(&path, CONFIG).unwrap();
    path
}

fn wg_up(args: &[&str]) -> (bool, String) {
    let conf = config_file("args");
    let out = Command::new(BIN)
        .args(["wg", "up"])
        .arg(&conf)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(conf);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn socks5_without_userspace_is_refused() {
    let (ok, err) = wg_up(&["--socks5", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(
        err.contains("--socks5 and --forward need --userspace"),
        "{err}"
    );
}

#[test]
fn forward_without_userspace_is_refused() {
    let (ok, err) = wg_up(&["--forward", "127.0.0.1:0=10.202.0.2:80"]);
    assert!(!ok);
    assert!(err.contains("need --userspace"), "{err}");
}

#[test]
fn bad_forward_values_name_the_problem() {
    for (value, says) in [
        ("127.0.0.1:8080", "expected LOCAL=REMOTE"),
        ("8080=10.202.0.2:80", "local address \"8080\""),
        ("127.0.0.1:8080=web:80", "remote address \"web:80\""),
        (
            "127.0.0.1:8080=10.202.0.2:0",
            "not a unicast address with a port",
        ),
    ] {
        let (ok, err) = wg_up(&["--userspace", "--forward", value]);
        assert!(!ok, "{value} accepted");
        assert!(err.contains(says), "{value}: {err}");
    }
}

#[test]
fn taken_socks5_port_is_an_error_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, err) = wg_up(&["--userspace", "--socks5", &addr]);
    assert!(!ok);
    assert!(
        err.contains(&format!("binding the SOCKS5 listener on {addr}")),
        "{err}"
    );
}

#[test]
fn userspace_tunnel_prints_its_listeners_and_stops_on_sigterm() {
    let conf = config_file("sigterm");
    let mut child = Command::new(BIN)
        .args(["wg", "up"])
        .arg(&conf)
        .args([
            "--userspace",
            "--socks5",
            "127.0.0.1:0",
            "--forward",
            "127.0.0.1:0=10.202.0.2:80",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("Ctrl-C to stop") {
            break;
        }
    }
    let text = seen.join("\n");
    assert!(text.contains("SOCKS5 listening on 127.0.0.1:"), "{text}");
    assert!(text.contains("forward listening on 127.0.0.1:"), "{text}");
    assert!(text.contains("-> 10.202.0.2:80"), "{text}");
    // SAFETY: signalling our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    let _ = std::fs::remove_file(conf);
    assert!(status.success(), "{status}: {}", rest.join("\n"));
    assert!(
        rest.iter().any(|l| l.contains("userspace tunnel down")),
        "{}",
        rest.join("\n")
    );
}

fn netns(b: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/netns/userspace.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(b)
        .env("CODERVPN", BIN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "userspace <-> {b} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("userspace ok: ours-userspace <-> {b}")),
        "{stdout}"
    );
    assert_eq!(stdout.matches("sha256 ok").count(), 3, "{stdout}");
    // Throughput goes to the test output for whoever runs it with --no-capture.
    println!("{stdout}");
}

#[test]
fn userspace_socks5_and_forward_reach_wireguard_go() {
    netns("wggo");
}

#[test]
fn userspace_socks5_and_forward_reach_our_tun_mode() {
    netns("ours");
}

#[test]
fn socks5_off_loopback_needs_credentials() {
    let (ok, err) = wg_up(&["--userspace", "--socks5", "0.0.0.0:0"]);
    assert!(!ok);
    assert!(err.contains("off loopback"), "{err}");
}

/// curl, a SOCKS5 client we did not write, logs in with RFC 1929: wrong credentials are
/// rejected, right ones reach the request (whose target, outside the tunnel, is then
/// answered "network unreachable", reply 3).
#[test]
fn curl_logs_in_with_the_credentials_file() {
    let conf = config_file("creds");
    let creds = std::env::temp_dir().join(format!("codervpn-creds-{}", std::process::id()));
    std::fs::write(&creds, "alice:open sesame\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = Command::new(BIN)
        .args(["wg", "up"])
        .arg(&conf)
        .args([
            "--userspace",
            "--socks5",
            "127.0.0.1:0",
            "--socks5-credentials",
        ])
        .arg(&creds)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("SOCKS5 listening on ").map(str::to_owned))
        .expect("the SOCKS5 address");
    let curl = |userinfo: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "/dev/null", "--proxy"])
            .arg(format!("socks5h://{userinfo}@{addr}"))
            .arg("http://192.0.2.1/")
            .output()
            .expect("curl (installed by .ci/run)");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let wrong = curl("alice:open%20sesame2");
    let right = curl("alice:open%20sesame");
    // SAFETY: signalling our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_file(conf);
    let _ = std::fs::remove_file(creds);
    assert!(wrong.contains("rejected"), "wrong password: {wrong}");
    assert!(
        !right.contains("rejected") && right.contains("(3)"),
        "right password: {right}"
    );
}
