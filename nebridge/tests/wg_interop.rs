//! `codervpn wg up` against WireGuard implementations we did not write, in two network
//! namespaces joined by a veth pair: ping and a 100 MB TCP transfer with matching SHA-256,
//! each way (`tests/netns/wg-interop.sh`). Needs root, iproute2, wireguard-tools,
//! wireguard-go (Debian) and boringtun-cli (`cargo install boringtun-cli`); `.ci/run`
//! installs them. Also ours with ours carrying UDP through TUN segmentation offload
//! (`tests/netns/udp-gso.sh`, needs Linux ≥ 6.2 for USO).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::netns_script as netns;

fn interop(a: &str, b: &str) {
    let stdout = netns(
        "wg-interop.sh",
        &[a, b],
        &format!("interop ok: {a} <-> {b}"),
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

/// UDP through `wg up` with TUN segmentation offload both ways: datagrams an application
/// sends with `UDP_SEGMENT` are read from the TUN as UDP GSO packets and cut here, and runs
/// of datagrams are written to the far TUN as UDP GSO frames; every byte is checked
/// (`tests/netns/udp-gso.sh`).
#[test]
fn udp_datagrams_cross_whole_with_udp_segmentation_offload_both_ways() {
    netns("udp-gso.sh", &[], "udp-gso ok");
}
