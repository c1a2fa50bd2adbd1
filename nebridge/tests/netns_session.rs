//! Whole sessions against the testbed, in network namespaces (host a: the client, host b:
//! `codervpn testbed serve`): `vpn-daemon run` driven by a Python manager over real pipes
//! (userspace with SOCKS5 by name, and a TUN the manager creates), and `codervpn up` with
//! dig/kdig, curl, a 10 MiB echo, `codervpn status` and a clean SIGINT
//! (`tests/netns/daemon-session.sh`, `tests/netns/up.sh`), and direct paths that fall back
//! to DERP and return (`tests/netns/direct.sh`, needs nftables too), the same through a
//! NAT router with the agents on a host of their own (`tests/netns/nat.sh`), and a
//! deployment reachable only through an HTTP proxy (`tests/netns/proxy.sh`, tinyproxy), and
//! hosts that share only IPv6 (`tests/netns/direct6.sh`).
//! Needs root, iproute2, wireguard-tools, dnsutils, knot-dnsutils, curl, tinyproxy and
//! python3 with protobuf; `.ci/run` installs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

fn script(name: &str, args: &[&str], want: &str) {
    common::netns_script(name, args, want);
}

#[test]
fn daemon_session_in_userspace_mode_reaches_an_agent_by_name_through_socks5() {
    script(
        "daemon-session.sh",
        &["userspace"],
        "session ok (userspace)",
    );
}

#[test]
fn daemon_session_on_a_tun_the_manager_created_carries_10_mib() {
    script("daemon-session.sh", &["tun"], "session ok (tun)");
}

#[test]
fn up_configures_the_interface_resolves_names_and_leaves_nothing_behind() {
    script("up.sh", &["embedded"], "up ok (embedded)");
}

/// Our own daemon binary, signed with the minisign CLI and served under `/bin/`, is
/// downloaded, verified and run as `vpn-daemon run` by `codervpn up --mode compat-daemon`.
#[test]
fn up_in_compat_daemon_mode_runs_the_verified_download() {
    script("up.sh", &["compat-daemon"], "up ok (compat-daemon)");
}

/// Our engine cdylib (built by `cargo build --workspace`), signed and served, is
/// downloaded, verified, loaded and opened with `OpenTunnel` by `--mode compat-dylib`.
#[test]
fn up_in_compat_dylib_mode_loads_the_verified_library() {
    script("up.sh", &["compat-dylib"], "up ok (compat-dylib)");
}

/// The path to an agent goes direct over the veth, falls back to DERP when UDP between the
/// hosts is blocked mid-transfer (the TCP stream survives), and goes direct again.
#[test]
fn up_goes_direct_falls_back_to_derp_when_udp_is_blocked_and_returns() {
    script("direct.sh", &[], "direct ok");
}

/// Client behind a masquerading router, agents on their own host: the path goes direct
/// through the NAT, falls back to DERP when the agents' host drops UDP from the router,
/// and goes direct again. The client advertised the NAT's address learned over STUN.
#[test]
fn up_goes_direct_through_a_nat_to_agents_on_their_own_host() {
    script("nat.sh", &[], "nat ok");
}

/// Both ends behind NATs: without STUN the path stays on DERP; with it both mappings are
/// advertised and disco punches through both NATs to a direct path.
#[test]
fn up_punches_through_two_nats_with_stun_and_stays_on_derp_without() {
    script("nat-both.sh", &[], "nat-both ok");
}

/// The deployment is reachable only through an HTTP proxy (tinyproxy, between the hosts):
/// with `HTTP_PROXY` set, REST, the tailnet websocket and DERP go through it and an agent
/// answers by name; a proxy refusing CONNECT is reported by name, and Ctrl-C while still
/// connecting stops `up` at once with nothing left behind.
#[test]
fn up_reaches_a_deployment_only_through_an_http_proxy() {
    script("proxy.sh", &[], "proxy ok");
}

/// IPv6 only between the hosts: REST, websocket, DERP and STUN over bracketed IPv6
/// literals, the client advertises its IPv6 endpoint and the path goes direct over IPv6.
#[test]
fn up_goes_direct_over_ipv6_when_the_hosts_share_only_ipv6() {
    script("direct6.sh", &[], "direct6 ok");
}

/// `codervpn ping`, `status --json`, `metrics` (CLI and `--metrics-listen`, parsed by
/// prometheus_client), `netcheck` and `bugreport` against the testbed with a direct path.
#[test]
fn diagnostics_show_a_direct_path() {
    script("diag.sh", &["direct"], "diag ok (direct)");
}

/// The same with UDP between the hosts dropped: every command shows DERP, and ping and
/// netcheck say UDP looks blocked.
#[test]
fn diagnostics_show_a_derp_only_path_and_why() {
    script("diag.sh", &["derp"], "diag ok (derp)");
}

/// Without systemd-resolved, `up` puts the tunnel's resolver first in /etc/resolv.conf:
/// getent and curl resolve workspace names through glibc, other names still reach the
/// original resolver, and the file comes back byte for byte on exit and after a SIGKILL
/// at the next start; a file another program rewrites is made ours again (the new one is
/// what exit restores), and one that keeps rewriting it is left to it (issue #14).
#[test]
fn up_without_resolved_manages_resolv_conf_and_restores_it() {
    script("resolv.sh", &[], "resolv ok");
}

/// Where Debian's resolvconf package generates /etc/resolv.conf (a symlink into
/// /run/resolvconf), `up` adds a record of its own: names resolve through glibc, a DHCP
/// renewal keeps our resolver first, exit deletes the record, and a SIGKILLed run's record
/// goes at the next start (issue #14; the real package, in a private mount namespace).
#[test]
fn up_adds_a_record_to_debians_resolvconf() {
    script("resolvconf.sh", &["debian"], "resolvconf ok (debian)");
}

/// The same with openresolv, which writes a plain file with its own header.
#[test]
fn up_adds_a_record_to_openresolv() {
    script(
        "resolvconf.sh",
        &["openresolv"],
        "resolvconf ok (openresolv)",
    );
}

/// /etc/resolv.conf a symlink to NetworkManager's file: that file is managed (ours first),
/// a rewrite by NetworkManager is followed, exit restores it and leaves the symlink.
#[test]
fn up_manages_network_managers_file_behind_a_symlink() {
    script("nm-symlink.sh", &[], "nm-symlink ok");
}

/// Fault campaign, namespace half (issue #17): a 19.7 MB echo stream on the direct path
/// comes back whole (SHA-256) across 10 s of 50 % UDP loss (the path may fall back to
/// DERP and return) ...
#[test]
fn an_echo_stream_survives_10_s_of_half_the_udp_lost() {
    script("faults.sh", &["loss"], "faults ok (loss)");
}

/// ... and across host a's address changing under it.
#[test]
fn an_echo_stream_survives_the_client_address_changing() {
    script("faults.sh", &["address"], "faults ok (address)");
}

/// With every path to an agent dead (the agent's host drops everything from the client),
/// a TCP connect fails with EHOSTUNREACH within ~7 s instead of hanging, and the Coder
/// Connect marker still resolves within 100 ms (issue #14).
#[test]
fn a_connect_to_an_agent_with_every_path_dead_fails_fast() {
    script("failfast.sh", &[], "failfast ok");
}

/// A wake after the tailnet and DERP connections went silent (dead but open): both are
/// probed, found dead within ~3 s and dialled again, and the agent answers over DERP
/// again (issue #14).
#[test]
fn a_wake_redials_silent_tailnet_and_derp_connections() {
    script("wake.sh", &[], "wake ok");
}
