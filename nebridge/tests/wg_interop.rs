//! `codervpn wg up` against WireGuard implementations we did not write, in two network
//! namespaces joined by a veth pair: ping and a 100 MB TCP transfer with matching SHA-256,
//! each way (`tests/netns/wg-interop.sh`). Needs root, iproute2, wireguard-tools,
//! wireguard-go (Debian) and boringtun-cli (`cargo install boringtun-cli`); `.ci/run`
//! installs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn interop(a: &str, b: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/netns/wg-interop.sh");
    let out = Command::new("bash")
        .arg(script)
        .args([a, b])
        .env("CODERVPN", env!("CARGO_BIN_EXE_codervpn"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{a} <-> {b} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("interop ok: {a} <-> {b}")),
        "{stdout}"
    );
    assert_eq!(stdout.matches("sha256 ok").count(), 2, "{stdout}");
}

#[test]
fn ours_with_ours() {
    interop("ours", "ours");
}

#[test]
fn ours_initiates_to_wireguard_go() {
    interop("ours", "wggo");
}

#[test]
fn wireguard_go_initiates_to_ours() {
    interop("wggo", "ours");
}

#[test]
fn ours_initiates_to_boringtun_cli() {
    interop("ours", "boringtun");
}

#[test]
fn boringtun_cli_initiates_to_ours() {
    interop("boringtun", "ours");
}
