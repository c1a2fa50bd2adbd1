//! Network settings applied to a real TUN in a fresh network namespace, checked with
//! iproute2; and the status socket with clients running as other uids.
//!
//! Needs root (namespaces, TUN, setuid): fails without it, unless CODERVPN_SKIP_ROOT_TESTS=1
//! asks for a printed skip. Every test makes its own namespace (`cvpn-netcfg-<pid>-<test>`)
//! and socket path, so tests run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use codervpn_nebridge::settings::{LinuxNetworkConfig, NetworkSettings, SplitDns};
use codervpn_nebridge::status::{
    StatusConn, StatusPublisher, StatusServer, TunnelState, parse_line,
};
use codervpn_proto::vpn::NetworkSettingsRequest;
use codervpn_proto::vpn::network_settings_request::{
    DnsSettings, IPv4Settings, IPv6Settings, i_pv4_settings::IPv4Route, i_pv6_settings::IPv6Route,
};
use tokio::io::AsyncBufReadExt;

const IF: &str = "coder0";
const SELF_ADDR: &str = "fd60:627a:a42b:1:2:3:4:5";

/// Whether we run as root. Otherwise the test fails — a skip must not pass for a pass —
/// unless `CODERVPN_SKIP_ROOT_TESTS=1` asks for the skip, which is then printed.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("CODERVPN_SKIP_ROOT_TESTS").is_some(),
            "needs root (namespaces, TUN); run as root, or set CODERVPN_SKIP_ROOT_TESTS=1 to skip"
        );
        eprintln!("SKIPPED (CODERVPN_SKIP_ROOT_TESTS): needs root");
    }
    root
}

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new(test: &str) -> Self {
        let name = format!("cvpn-netcfg-{}-{test}", std::process::id());
        if Path::new(&format!("/run/netns/{name}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        Self(name)
    }

    /// Runs `f` on a thread that has entered the namespace, on a runtime of its own
    /// (sockets and TUNs made there belong to the namespace).
    fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with a namespace descriptor we own.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f());
        })
        .join()
        .unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// iproute2 in the namespace, usable inside `Netns::run` (no delete on drop).
struct NsView(String);

impl NsView {
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `ip -6 route get ADDR`, or the error text when there is no route.
    fn route_get(&self, addr: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0, "-6", "route", "get", addr])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// In a fresh namespace: creates TUN `coder0`, then runs `body` with iproute2 for the
/// namespace, the TUN's descriptor and a [`LinuxNetworkConfig`] for it.
fn in_netns_with_tun<F>(test: &str, dns: SplitDns, body: F)
where
    F: AsyncFnOnce(NsView, OwnedFd, LinuxNetworkConfig) + Send + 'static,
{
    if !is_root() {
        return;
    }
    let netns = Netns::new(test);
    let ns = NsView(netns.0.clone());
    netns.run(move || async move {
        let tun = codervpn_engine::device::linux_tun::create_tun(IF, false)
            .unwrap()
            .0;
        let cfg = LinuxNetworkConfig::with_split_dns(IF, dns).unwrap();
        body(ns, tun, cfg).await;
    });
}

/// The router-originated request of our tunnel (codervpn-protocol.md §8.1).
fn router_request(addr: &str, excluded: &[(&str, u32)]) -> NetworkSettingsRequest {
    NetworkSettingsRequest {
        mtu: 1280,
        ipv6_settings: Some(IPv6Settings {
            addrs: vec![addr.into()],
            prefix_lengths: vec![128],
            included_routes: vec![IPv6Route {
                destination: "fd60:627a:a42b::".into(),
                prefix_length: 48,
                router: String::new(),
            }],
            excluded_routes: excluded
                .iter()
                .map(|(d, p)| IPv6Route {
                    destination: (*d).into(),
                    prefix_length: *p,
                    router: String::new(),
                })
                .collect(),
        }),
        ..Default::default()
    }
}

fn dns_request() -> NetworkSettingsRequest {
    NetworkSettingsRequest {
        dns_settings: Some(DnsSettings {
            servers: vec!["fd60:627a:a42b::53".into()],
            search_domains: vec![],
            domain_name: "coder".into(),
            match_domains: vec!["coder".into()],
            match_domains_no_search: false,
        }),
        ..Default::default()
    }
}

fn merged(reqs: &[NetworkSettingsRequest]) -> NetworkSettings {
    reqs.iter()
        .fold(NetworkSettings::default(), |s, r| s.merged(r).unwrap())
}

fn unavailable() -> SplitDns {
    SplitDns::Unavailable {
        why: "systemd-resolved is not running".into(),
    }
}

fn global_addrs(ns: &NsView) -> Vec<String> {
    ns.ip(&["-6", "addr", "show", "dev", IF, "scope", "global"])
        .lines()
        .filter(|l| l.trim_start().starts_with("inet6"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn apply_sets_address_route_mtu_and_link_up() {
    in_netns_with_tun("apply", unavailable(), async |ns, _tun, mut cfg| {
        cfg.apply(&merged(&[router_request(SELF_ADDR, &[])]))
            .await
            .unwrap();

        let addrs = ns.ip(&["-6", "addr", "show", "dev", IF]);
        assert!(
            addrs.contains(&format!("inet6 {SELF_ADDR}/128 scope global")),
            "{addrs}"
        );
        let routes = ns.ip(&["-6", "route", "show", "dev", IF]);
        assert!(routes.contains("fd60:627a:a42b::/48"), "{routes}");
        let link = ns.ip(&["link", "show", "dev", IF]);
        assert!(link.contains("mtu 1280"), "{link}");
        assert!(link.contains(",UP"), "{link}");
    });
}

#[test]
fn reapply_removes_what_disappeared_and_adds_what_is_new() {
    in_netns_with_tun("diff", unavailable(), async |ns, _tun, mut cfg| {
        let first = merged(&[router_request(SELF_ADDR, &[])]);
        cfg.apply(&first).await.unwrap();

        let next = first
            .merged(&NetworkSettingsRequest {
                mtu: 1400,
                ipv6_settings: Some(IPv6Settings {
                    addrs: vec!["fd60:627a:a42b::beef".into()],
                    prefix_lengths: vec![128],
                    included_routes: vec![IPv6Route {
                        destination: "fd60:627a:a42c::".into(),
                        prefix_length: 48,
                        router: String::new(),
                    }],
                    excluded_routes: vec![],
                }),
                ..Default::default()
            })
            .unwrap();
        cfg.apply(&next).await.unwrap();

        let addrs = global_addrs(&ns).join("\n");
        assert!(!addrs.contains(SELF_ADDR), "{addrs}");
        assert!(addrs.contains("fd60:627a:a42b::beef/128"), "{addrs}");
        let routes = ns.ip(&["-6", "route", "show", "dev", IF]);
        assert!(!routes.contains("fd60:627a:a42b::/48"), "{routes}");
        assert!(routes.contains("fd60:627a:a42c::/48"), "{routes}");
        assert!(ns.ip(&["link", "show", "dev", IF]).contains("mtu 1400"));
    });
}

#[test]
fn excluded_route_does_not_go_through_the_tunnel() {
    in_netns_with_tun("excl", unavailable(), async |ns, _tun, mut cfg| {
        let req = router_request(SELF_ADDR, &[("fd60:627a:a42b:ff::", 64)]);
        cfg.apply(&merged(&[req])).await.unwrap();

        let inside = ns.route_get("fd60:627a:a42b:1::9");
        assert!(inside.contains(&format!("dev {IF}")), "{inside}");
        let excluded = ns.route_get("fd60:627a:a42b:ff::9");
        assert!(!excluded.contains(&format!("dev {IF}")), "{excluded}");
        // 64 - 48 prefixes replace the /48.
        let routes = ns.ip(&["-6", "route", "show", "dev", IF, "proto", "static"]);
        assert_eq!(routes.lines().count(), 16, "{routes}");
    });
}

#[test]
fn ipv4_addresses_and_routes_apply_with_masks() {
    in_netns_with_tun("v4", unavailable(), async |ns, _tun, mut cfg| {
        let req = NetworkSettingsRequest {
            ipv4_settings: Some(IPv4Settings {
                addrs: vec!["100.64.0.1".into()],
                subnet_masks: vec!["255.255.255.255".into()],
                router: String::new(),
                included_routes: vec![IPv4Route {
                    destination: "192.168.77.5".into(),
                    mask: "255.255.255.0".into(),
                    router: String::new(),
                }],
                excluded_routes: vec![],
            }),
            ..Default::default()
        };
        cfg.apply(&merged(&[req])).await.unwrap();
        assert!(
            ns.ip(&["-4", "addr", "show", "dev", IF])
                .contains("inet 100.64.0.1/32")
        );
        assert!(
            ns.ip(&["-4", "route", "show", "dev", IF])
                .contains("192.168.77.0/24")
        );
        cfg.teardown().await.unwrap();
        assert!(
            !ns.ip(&["-4", "addr", "show", "dev", IF])
                .contains("100.64.0.1")
        );
        assert_eq!(ns.ip(&["-4", "route", "show", "dev", IF]), "");
    });
}

#[test]
fn teardown_removes_everything_it_added() {
    in_netns_with_tun("down", unavailable(), async |ns, _tun, mut cfg| {
        let req = router_request(SELF_ADDR, &[("fd60:627a:a42b:ff::", 64)]);
        cfg.apply(&merged(&[req, dns_request()])).await.unwrap();
        assert!(!global_addrs(&ns).is_empty());

        cfg.teardown().await.unwrap();
        assert_eq!(global_addrs(&ns), Vec::<String>::new());
        let routes = ns.ip(&["-6", "route", "show", "dev", IF]);
        assert!(!routes.contains("fd60:627a:a42"), "{routes}");
        assert_eq!(cfg.applied(), &Default::default());
    });
}

#[test]
fn teardown_succeeds_when_the_interface_is_gone() {
    in_netns_with_tun("gone", unavailable(), async |_ns, tun, mut cfg| {
        cfg.apply(&merged(&[router_request(SELF_ADDR, &[])]))
            .await
            .unwrap();
        drop(tun);
        cfg.teardown().await.unwrap();
    });
}

#[test]
fn apply_to_missing_interface_names_it() {
    if !is_root() {
        return;
    }
    let netns = Netns::new("missing");
    netns.run(move || async move {
        let mut cfg = LinuxNetworkConfig::with_split_dns(IF, unavailable()).unwrap();
        let err = cfg
            .apply(&merged(&[router_request(SELF_ADDR, &[])]))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "interface coder0: interface coder0 not found"
        );
    });
}

#[test]
fn split_dns_runs_resolvectl_and_reverts_on_teardown() {
    if !is_root() {
        return;
    }
    let dir = temp_dir("resolvectl");
    let log = dir.join("calls");
    let bin = dir.join("resolvectl");
    std::fs::write(
        &bin,
        format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    in_netns_with_tun(
        "dns",
        SplitDns::Resolvectl(bin),
        async move |_ns, _tun, mut cfg| {
            let s = merged(&[router_request(SELF_ADDR, &[]), dns_request()]);
            cfg.apply(&s).await.unwrap();
            // A router-only diff keeps DNS: no second resolvectl run.
            cfg.apply(&s.merged(&router_request(SELF_ADDR, &[])).unwrap())
                .await
                .unwrap();
            cfg.teardown().await.unwrap();
            assert_eq!(
                std::fs::read_to_string(&log).unwrap(),
                "dns coder0 fd60:627a:a42b::53\ndomain coder0 coder\ndefault-route coder0 no\nrevert coder0\n"
            );
        },
    );
    let _ = std::fs::remove_dir_all(dir);
}

// ---- status socket ---------------------------------------------------------------------

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("codervpn-netcfg-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

const GROUP: u32 = 4242;
const NOBODY: u32 = 65534;

/// Connects to `path` from a forked child running as `uid`/`gid`/`groups`; returns the
/// first line it read, or the connect errno.
fn connect_as(path: &Path, uid: u32, gid: u32, groups: &[u32]) -> Result<String, i32> {
    // Everything the child touches is prepared before fork (no allocation after it).
    // SAFETY: a zeroed sockaddr_un is valid; the path fits (checked).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let groups = groups.to_vec();
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child calls only async-signal-safe functions and then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: raw syscalls on memory prepared above.
        unsafe {
            libc::close(fds[0]);
            let out = fds[1];
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(2);
            }
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(s, (&raw const addr).cast(), len) != 0 {
                let e = *libc::__errno_location();
                let code = [b'E', e as u8];
                libc::write(out, code.as_ptr().cast(), 2);
                libc::_exit(0);
            }
            let mut buf = [0u8; 8192];
            let mut n = 0usize;
            while n < buf.len() {
                let r = libc::read(s, buf.as_mut_ptr().add(n).cast(), buf.len() - n);
                if r <= 0 {
                    break;
                }
                n += r as usize;
                if buf[..n].contains(&b'\n') {
                    break;
                }
            }
            libc::write(out, [b'L'].as_ptr().cast(), 1);
            libc::write(out, buf.as_ptr().cast(), n);
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end; the read end becomes a File we own.
    unsafe { libc::close(fds[1]) };
    let mut from_child = unsafe { File::from_raw_fd(fds[0]) };
    let mut got = Vec::new();
    from_child.read_to_end(&mut got).unwrap();
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child: {status}"
    );
    match got.split_first() {
        Some((b'E', [e])) => Err(i32::from(*e)),
        Some((b'L', line)) => Ok(String::from_utf8(line.to_vec()).unwrap()),
        other => panic!("child said {other:?}"),
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// A status server on a fresh socket (group `group`); runs `body` with its path and the
/// publisher feeding it.
fn with_status_server<F, Fut>(test: &str, group: Option<u32>, body: F)
where
    F: FnOnce(PathBuf, StatusPublisher) -> Fut,
    Fut: Future<Output = ()>,
{
    if !is_root() {
        return;
    }
    let dir = temp_dir(test);
    let path = dir.join("status.sock");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let publisher = StatusPublisher::new();
        let server = StatusServer::bind(&path, group).unwrap();
        tokio::spawn(server.serve(publisher.subscribe(), None));
        body(path.clone(), publisher).await;
    });
    let _ = std::fs::remove_dir_all(dir);
}

/// [`connect_as`] off the runtime's threads.
async fn client_as(path: &Path, uid: u32, gid: u32, groups: &[u32]) -> Result<String, i32> {
    let (path, groups) = (path.to_owned(), groups.to_vec());
    tokio::task::spawn_blocking(move || connect_as(&path, uid, gid, &groups))
        .await
        .unwrap()
}

#[test]
fn status_socket_streams_snapshot_then_each_change() {
    with_status_server("stream", Some(GROUP), async |path, mut publisher| {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), GROUP);

        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut lines = tokio::io::BufReader::new(stream).lines();
        let next = async |lines: &mut tokio::io::Lines<_>| {
            let line: String = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            parse_line(&path, &line).unwrap()
        };
        assert_eq!(next(&mut lines).await.state, "stopped");
        publisher.set_state(TunnelState::Starting, now());
        assert_eq!(next(&mut lines).await.state, "starting");
        publisher.set_state(TunnelState::Failed("handshake timed out".into()), now());
        let s = next(&mut lines).await;
        assert_eq!(
            (s.state.as_str(), s.error.as_deref()),
            ("failed", Some("handshake timed out"))
        );
    });
}

#[test]
fn status_socket_allows_group_members() {
    with_status_server("group", Some(GROUP), async |path, _publisher| {
        // Primary group, then supplementary group (SO_PEERGROUPS).
        let line = client_as(&path, NOBODY, GROUP, &[]).await.unwrap();
        assert_eq!(parse_line(&path, &line).unwrap().state, "stopped");
        let line = client_as(&path, NOBODY, NOBODY, &[GROUP]).await.unwrap();
        assert_eq!(parse_line(&path, &line).unwrap().state, "stopped");
    });
}

#[test]
fn status_socket_refuses_other_uids() {
    with_status_server("refuse", Some(GROUP), async |path, _publisher| {
        // Mode 0660 keeps nobody out at connect time …
        assert_eq!(
            client_as(&path, NOBODY, NOBODY, &[]).await,
            Err(libc::EACCES)
        );
        // … and with the mode loosened, the credential check refuses with an error line.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let line = client_as(&path, NOBODY, NOBODY, &[]).await.unwrap();
        let err = parse_line(&path, &line).unwrap_err().to_string();
        assert!(
            err.contains("refused: permission denied: uid 65534 is not root"),
            "{err}"
        );
    });
}

#[test]
fn status_subcommand_prints_the_table() {
    with_status_server("cli", None, async |path, mut publisher| {
        publisher.set_state(TunnelState::Started, now());
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_codervpn"))
                .args(["status", "--socket"])
                .arg(&path)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Coder Connect: started\nNo workspaces.\n"
        );
    });
}

#[test]
fn status_socket_bind_refuses_a_live_socket() {
    with_status_server("live", None, async |path, _publisher| {
        let err = StatusServer::bind(&path, None).err().unwrap().to_string();
        assert!(
            err.contains("another process is serving status on it"),
            "{err}"
        );
        assert!(path.exists());
    });
}

/// Requests on the status socket (issue #19): answered one line each with a `kind`; bad
/// lines get an error answer, an endless one closes the connection; a compat tunnel (no
/// engine) refuses ping by name.
#[test]
fn status_socket_answers_requests_and_refuses_garbage() {
    if !is_root() {
        return;
    }
    let dir = temp_dir("requests");
    let path = dir.join("status.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let mut publisher = StatusPublisher::new();
    let diag = std::sync::Arc::new(codervpn_nebridge::diag::UpDiag {
        engine: None,
        status: publisher.subscribe(),
        logs: None,
        settings: Default::default(),
        secrets: vec!["sekrit-token-123".into()],
        mode: "compat-daemon".into(),
        deployment: None,
    });
    let server = StatusServer::bind(&path, None).unwrap();
    rt.spawn(server.serve(publisher.subscribe(), Some(diag.handler())));
    publisher.set_state(TunnelState::Started, now());

    let mut conn = StatusConn::connect(&path).unwrap();
    let t = Duration::from_secs(5);
    let status = conn
        .ask(&serde_json::json!({"request": "status"}), t)
        .unwrap();
    assert_eq!(status["status"]["state"], "started", "{status}");
    assert_eq!(status["status"]["schema_version"], 1);
    assert!(
        status["status"]["control_plane"].is_null(),
        "no engine facts"
    );
    let err = conn
        .ask(
            &serde_json::json!({"request": "ping", "address": "fd60::1"}),
            t,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs our engine"), "{err}");
    let err = conn
        .ask(&serde_json::json!({"request": "reboot"}), t)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown request \"reboot\""), "{err}");
    let metrics = conn
        .ask(&serde_json::json!({"request": "metrics"}), t)
        .unwrap();
    assert!(metrics["text"].as_str().unwrap().contains("codervpn_up 1"));

    // Not JSON: an error answer, and the connection stays usable.
    use std::io::{BufRead, Write};
    let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
    raw.set_read_timeout(Some(t)).unwrap();
    raw.write_all(b"{not json\n").unwrap();
    let mut r = std::io::BufReader::new(raw.try_clone().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.contains("\"kind\"") {
            break;
        }
    }
    assert!(line.contains("bad request line"), "{line}");
    // More than the connection may send, no newline: an error, then EOF.
    let junk = vec![b'x'; 2 << 20];
    let _ = raw.write_all(&junk);
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut r, &mut rest);
    assert!(rest.contains("request line too long"), "{rest}");
    drop(rt);
    let _ = std::fs::remove_dir_all(dir);
}
