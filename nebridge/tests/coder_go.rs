//! Against Coder's own Go code, built from the release pinned in `tests/coder-go` by
//! `tests/coder-go/build.sh` (`.ci/run` runs it; a missing binary fails these tests):
//! the real `coder` CLI (`vpn-daemon run`) and `coderpeer` (a Coder tailnet deployment from
//! coder's packages with Go agents, and a Go CoderVPN manager on coder's `vpn` types).
//!
//! - A Go manager drives our `vpn-daemon run` against the Go deployment (loopback,
//!   userspace, SOCKS5) and in namespaces (`tests/netns/coder-go.sh go-manager`).
//! - `codervpn up` against the Go deployment in namespaces: DNS, ping, page, 10 MB, direct
//!   with the real magicsock, DERP when UDP is blocked, direct again (`go-server`).
//! - `codervpn up --mode compat-daemon` runs the real `coder vpn-daemon run` against our
//!   testbed (`compat-coder`): coder0, resolv.conf, curl by name, restored on exit.
//! - The handshake rules agree: each bad manager header is refused by Coder's daemon and by
//!   ours alike.
//!
//! Needs root for the namespace cases, and what `.ci/run` installs (iptables for Coder's
//! Linux router, minisign, dig, curl, nftables).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn coder_go(bin: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/coder-go")
        .join(bin);
    assert!(
        p.exists(),
        "{} is missing: run tests/coder-go/build.sh (Coder's Go peers; .ci/run does)",
        p.display()
    );
    p
}

fn script(mode: &str, want: &str) {
    coder_go("coder");
    common::netns_script("coder-go.sh", &[mode], want);
}

/// `codervpn up` against coder's tailnet service, coordinator, DERP and Go agents.
#[test]
fn up_against_coders_go_deployment_goes_direct_falls_back_to_derp_and_returns() {
    script("go-server", "coder-go ok (go-server)");
}

/// A Go manager (coder's `vpn` message types) drives our daemon in a namespace.
#[test]
fn a_go_manager_drives_our_daemon_against_coders_go_deployment() {
    script("go-manager", "coder-go ok (go-manager)");
}

/// Our manager runs the real `coder vpn-daemon run`, downloaded from our testbed and
/// verified; the Go tunnel joins our testbed and carries ping, HTTP and 10 MB by name.
#[test]
fn compat_daemon_runs_coders_real_daemon_against_our_testbed() {
    script("compat-coder", "coder-go ok (compat-coder)");
}

/// A loopback address with a port nobody listens on (for the daemon's SOCKS5 proxy).
fn free_loopback_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `coderpeer serve` on loopback; returns the child and its JSON line.
fn go_server(args: &[&str]) -> (std::process::Child, serde_json::Value) {
    common::spawn_json_line(Command::new(coder_go("coderpeer")).arg("serve").args(args))
}

/// Loopback, no root: the Go manager starts our daemon in userspace mode, sees both agents
/// with the names Coder's tunnel gives them, fetches a page through our SOCKS5 proxy by
/// name, asks for a peer update, stops, and our daemon exits on hang-up.
#[test]
fn a_go_manager_drives_our_userspace_daemon_on_loopback() {
    let (mut server, v) = go_server(&["--workspaces", "2"]);
    let socks = free_loopback_addr();
    let url = v["url"].as_str().unwrap();
    let token = v["token"].as_str().unwrap();
    let name = v["agents"][1]["fqdn"][0].as_str().unwrap();
    let out = Command::new(coder_go("coderpeer"))
        .args(["manager", "--url", url, "--token", token, "--agents", "2"])
        .args(["--fetch", &format!("http://{name}/"), "--socks5", &socks])
        .args(["--", env!("CARGO_BIN_EXE_codervpn"), "vpn-daemon", "run"])
        .args(["--rpc-read-fd", "3", "--rpc-write-fd", "4"])
        .env("CODERVPN_SOCKS5", &socks)
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for a in v["agents"].as_array().unwrap() {
        // Coder's tunnel sends the names sorted, with the trailing dot.
        let mut names: Vec<String> = a["fqdn"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| format!("{}.", n.as_str().unwrap()))
            .collect();
        names.sort();
        let want = format!("fqdn={} ip={}", names.join(","), a["ip"].as_str().unwrap());
        assert!(stdout.contains(&want), "want {want:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains("fetched") && stdout.contains("Hello from agent main of workspace dev2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("get_peer_update: 2 workspaces, 2 agents"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tunnel exited on hang-up: status 0"),
        "{stdout}"
    );
}

/// Sends `header` as the manager's header line to `tunnel` (a command taking fds 3 and 4)
/// and returns the Go manager's report.
fn bad_header(header: &str, tunnel: &[&str]) -> String {
    let out = Command::new(coder_go("coderpeer"))
        .args(["manager", "--timeout", "20s", "--header", header, "--"])
        .args(tunnel)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("bad header refused"),
        "header {header:?} to {tunnel:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Each header Coder's speaker refuses (wrong role, no common major version, the old
/// `codervpn <version> <role>` order, not codervpn at all, an unparsable version list,
/// over the 256-byte cap) is refused by Coder's daemon and by ours: both close the pipe
/// and exit.
#[test]
fn bad_manager_headers_are_refused_by_coders_daemon_and_ours_alike() {
    let coder = coder_go("coder");
    let coder = coder.to_str().unwrap();
    let ours = env!("CARGO_BIN_EXE_codervpn");
    let long = format!("codervpn manager 1.0{}", " ".repeat(300));
    for header in [
        "codervpn tunnel 1.0",
        "codervpn manager 9.0",
        "codervpn 1.0 manager",
        "openvpn manager 1.0",
        "codervpn manager one",
        long.as_str(),
    ] {
        for bin in [coder, ours] {
            let fds = ["--rpc-read-handle", "3", "--rpc-write-handle", "4"];
            bad_header(header, &[&[bin, "vpn-daemon", "run"][..], &fds].concat());
        }
    }
}

/// Runs the Go manager with `--dump` against `tunnel` and returns the dump.
fn dump_of(v: &serde_json::Value, tunnel: &[&str], envs: &[(&str, &str)]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dump.json");
    let out = Command::new(coder_go("coderpeer"))
        .args(["manager", "--agents", "2", "--dump", path.to_str().unwrap()])
        .args(["--url", v["url"].as_str().unwrap()])
        .args(["--token", v["token"].as_str().unwrap(), "--"])
        .args(tunnel)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tunnel:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// The manager's view after every NetworkSettings request: each request replaces the parts
/// it carries (a non-zero MTU, the IPv6 settings, the DNS settings).
fn merged(dump: &serde_json::Value) -> (u64, serde_json::Value, serde_json::Value) {
    let (mut mtu, mut v6, mut dns) = (0, serde_json::Value::Null, serde_json::Value::Null);
    for s in dump["network_settings"].as_array().unwrap() {
        if let Some(m) = s["mtu"].as_u64() {
            mtu = m;
        }
        if !s["ipv6Settings"].is_null() {
            v6 = s["ipv6Settings"].clone();
        }
        if !s["dnsSettings"].is_null() {
            dns = s["dnsSettings"].clone();
        }
    }
    (mtu, v6, dns)
}

/// The same Go manager drives Coder's Go tunnel (`coderpeer tunnel`: vpn.NewTunnel with the
/// tunnel's own router and DNS configurator, as on macOS) and ours against the same Go
/// deployment: the workspaces and agents (names, FQDN lists in order, addresses, a
/// handshake) are identical, and so are the address, routes and DNS they ask for, but for
/// two deliberate differences: we ask for MTU 1280 where Coder's tunnel sends 0
/// ("unchanged"), and we add the match domain `coderlan` (an alias we serve).
#[test]
fn our_daemon_says_what_coders_tunnel_says_to_a_manager() {
    let (mut server, v) = go_server(&["--workspaces", "2"]);
    let go = dump_of(
        &v,
        &[coder_go("coderpeer").to_str().unwrap(), "tunnel"],
        &[],
    );
    let socks = free_loopback_addr();
    let ours = dump_of(
        &v,
        &[env!("CARGO_BIN_EXE_codervpn"), "vpn-daemon", "run"]
            .into_iter()
            .chain(["--rpc-read-fd", "3", "--rpc-write-fd", "4"])
            .collect::<Vec<_>>(),
        &[("CODERVPN_SOCKS5", &socks)],
    );
    let _ = server.kill();
    let _ = server.wait();

    assert_eq!(ours["workspaces"], go["workspaces"]);
    assert_eq!(ours["agents"], go["agents"]);
    assert_eq!(go["agents"].as_array().unwrap().len(), 2);

    let (go_mtu, go_v6, go_dns) = merged(&go);
    let (our_mtu, our_v6, our_dns) = merged(&ours);
    assert_eq!(go_mtu, 0, "Coder's tunnel now sends an MTU: {go:#}");
    assert_eq!(our_mtu, 1280);
    for v6 in [&go_v6, &our_v6] {
        let addrs = v6["addrs"].as_array().unwrap();
        assert_eq!(addrs.len(), 1);
        assert!(addrs[0].as_str().unwrap().starts_with("fd60:627a:a42b:"));
    }
    assert_eq!(our_v6["prefixLengths"], go_v6["prefixLengths"]);
    assert_eq!(our_v6["includedRoutes"], go_v6["includedRoutes"]);
    assert_eq!(our_v6["excludedRoutes"], go_v6["excludedRoutes"]);
    assert_eq!(our_dns["servers"], go_dns["servers"]);
    assert_eq!(our_dns["domainName"], go_dns["domainName"]);
    assert_eq!(our_dns["searchDomains"], go_dns["searchDomains"]);
    assert_eq!(go_dns["matchDomains"], serde_json::json!(["coder"]));
    assert_eq!(
        our_dns["matchDomains"],
        serde_json::json!(["coder", "coderlan"])
    );
}

/// Compat mode runs a downloaded CLI only when its `version --output=json` equals the
/// server's version, as Coder Desktop requires (issue #14): the real `coder` v2.36.1
/// passes against "v2.36.1" and is refused against any other; output that is not the
/// JSON expected, a failing exit and a CLI that hangs are refused too (the hanging one
/// killed within the timeout). Each runs from a sealed memfd, as compat mode runs it.
#[test]
fn a_downloaded_cli_runs_only_when_its_version_is_the_servers() {
    use codervpn_nebridge::compat::Executable;
    use codervpn_nebridge::compat::launch::{LaunchError, check_cli_version};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(coder_go("coder")).unwrap();
    let coder = Executable::new("coder-linux-amd64", "", &bytes, dir.path(), None).unwrap();
    assert!(coder.in_memory(), "{coder:?}");
    let t = Duration::from_secs(10);
    check_cli_version(&coder, "v2.36.1", t).expect("the real CLI is v2.36.1");
    for other in ["v2.36.0", "v2.36.1-rc.1", "2.36.1", ""] {
        match check_cli_version(&coder, other, t) {
            Err(LaunchError::VersionMismatch { binary, server, .. }) => {
                assert_eq!((binary.as_str(), server.as_str()), ("v2.36.1", other));
            }
            r => panic!("server {other:?}: {r:?}"),
        }
    }
    let fake = |name: &str, body: &str| {
        let script = format!("#!/bin/sh\n{body}\n");
        Executable::new(name, "", script.as_bytes(), dir.path(), None).unwrap()
    };
    let cases = [
        ("text", "echo 'Coder v2.36.1'", "not the JSON expected"),
        (
            "noversion",
            "echo '{\"Version\": 2}'",
            "not the JSON expected",
        ),
        (
            "fails",
            "echo '{\"version\":\"v2.36.1\"}'; exit 3",
            "exited with exit status: 3",
        ),
    ];
    for (name, body, want) in cases {
        let err = check_cli_version(&fake(name, body), "v2.36.1", t).unwrap_err();
        assert!(
            matches!(err, LaunchError::VersionUnreadable { .. }) && err.to_string().contains(want),
            "{name}: {err}"
        );
    }
    let hang = fake(
        "hang",
        &format!("echo $$ > {}/pid; exec sleep 60", dir.path().display()),
    );
    let start = Instant::now();
    let err = check_cli_version(&hang, "v2.36.1", Duration::from_millis(700)).unwrap_err();
    assert!(err.to_string().contains("killed"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signal 0 only checks whether the process exists.
    assert_ne!(
        unsafe { libc::kill(pid, 0) },
        0,
        "the hanging CLI {pid} still runs"
    );
}

/// Issue #17: the real `coder` v2.36.1, fetched from our testbed as compat mode fetches
/// it, is version-checked and run as `coder vpn-daemon run` from a sealed memfd — its
/// `/proc/<pid>/exe` is the memfd, its `argv[0]` is `coder`, it keeps no descriptor of the
/// memfd, it handshakes with us — and the cache directory holds the artifact as data (mode
/// 0600) and nothing else. (The signature path is `compat/`'s and `coder-go.sh
/// compat-coder`'s; this one skips it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_daemon_runs_the_real_cli_from_a_sealed_memfd() {
    use codervpn_nebridge::compat::launch::{CompatHost, spawn_daemon};
    use codervpn_nebridge::compat::{ArtifactKind, CompatConfig, Platform, fetch_verified};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;
    let coder = std::fs::read(coder_go("coder")).unwrap();
    let testbed = codervpn_testbed::Testbed::start(codervpn_testbed::TestbedConfig {
        version: "v2.36.1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let name = Platform::current().unwrap().file_name(ArtifactKind::Daemon);
    testbed.publish(&name, coder);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut config = CompatConfig::new(testbed.url().clone(), cache.clone(), Vec::new());
    config.allow_http = true;
    config.session_token = Some(testbed.token());
    config.insecure_skip_verify = true;
    config.max_bytes = 1 << 30;
    let artifact = fetch_verified(&config, ArtifactKind::Daemon, &mut |_| {})
        .await
        .unwrap();

    let (conn, host) = spawn_daemon(&artifact, &[], &[], Duration::from_secs(20))
        .await
        .unwrap();

    let CompatHost::Daemon(child) = &host else {
        panic!("not a daemon");
    };
    let pid = child.id();
    // Everything is read first and the daemon stopped before any assertion, so that a
    // failing one does not leave it running.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .flat_map(|e| std::fs::read_link(e.path()))
                .collect()
        })
        .unwrap_or_default();
    let files: Vec<(String, u32)> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
            (e.file_name().to_string_lossy().into_owned(), mode)
        })
        .collect();
    drop(conn);
    tokio::task::spawn_blocking(move || host.finish(Duration::from_secs(3)))
        .await
        .unwrap();

    let memfd = format!("/memfd:codervpn-compat-{}-{name}", &artifact.sha1[..12]);
    assert_eq!(exe.unwrap().to_str().unwrap(), format!("{memfd} (deleted)"));
    let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).take(3).collect();
    assert_eq!(argv, [&b"coder"[..], b"vpn-daemon", b"run"]);
    assert!(fds.len() >= 3, "{fds:?}");
    for target in &fds {
        assert!(!target.to_string_lossy().starts_with(&memfd), "{fds:?}");
    }
    assert_eq!(files, [(name, 0o600)]);
    // SAFETY: signal 0 only checks whether the process exists.
    assert_ne!(
        unsafe { libc::kill(pid as i32, 0) },
        0,
        "coder {pid} still runs"
    );
}

/// Coder's Linux daemon behaviour (issue #14): the same Go manager sends no TUN
/// (`tunnel_file_descriptor` 0) to Coder's real `coder vpn-daemon run` and then to ours;
/// both make `coder0` with the same address, MTU, route and first resolver (two documented
/// differences: table 52 and the original resolvers), send the manager no settings, and
/// leave nothing after the stop; ours killed with SIGKILL loses `coder0` with the process
/// and its resolv.conf is put back by the next start (`tests/netns/coder0.sh`).
#[test]
fn our_daemon_makes_and_removes_coder0_as_coders_daemon_does() {
    coder_go("coder");
    coder_go("coderpeer");
    common::netns_script("coder0.sh", &[], "coder0 ok");
}
