//! Encoding cross-check against Google's protobuf runtime (Python): `tests/python/manager.py`
//! is a manager written against Google's generated code. Needs `python3` with `protobuf`
//! and `grpcio-tools` (`.ci/run` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use codervpn_proto::vpn::{ManagerMessage, TunnelMessage, manager_message, tunnel_message};
use prost::Message;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/manager.py")
}

fn python(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("python3 is needed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "manager.py {args:?} failed (install with `pip install protobuf grpcio-tools`):\n{stdout}\n{stderr}"
    );
    stdout
}

#[test]
fn google_protobuf_manager_drives_the_daemon_byte_exact() {
    let stdout = python(&["exchange", env!("CARGO_BIN_EXE_codervpn")]);
    assert!(stdout.contains("exchange ok"), "{stdout}");
}

#[test]
fn messages_encoded_by_google_protobuf_decode_and_reencode_identically() {
    let dir = std::env::temp_dir().join(format!("codervpn-fixtures-{}", std::process::id()));
    python(&["fixtures", dir.to_str().unwrap()]);
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let bytes = std::fs::read(&path).unwrap();
        let reencoded = if name.starts_with("tunnel_") {
            let m = TunnelMessage::decode(&bytes[..]).unwrap();
            check_tunnel(&name, &m);
            m.encode_to_vec()
        } else {
            let m = ManagerMessage::decode(&bytes[..]).unwrap();
            check_manager(&name, &m);
            m.encode_to_vec()
        };
        assert_eq!(reencoded, bytes, "{name} re-encodes differently");
        seen += 1;
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(seen, 11);
}

fn check_tunnel(name: &str, m: &TunnelMessage) {
    match (name, &m.msg) {
        ("tunnel_peer_update", Some(tunnel_message::Msg::PeerUpdate(u))) => {
            let a = &u.upserted_agents[0];
            assert_eq!(a.id, (0u8..16).collect::<Vec<_>>());
            assert_eq!(a.last_handshake.unwrap().seconds, -62135596800);
            let ping = a.last_ping.as_ref().unwrap();
            assert!(ping.did_p2p);
            assert_eq!(ping.preferred_derp, "Coder Region");
            assert_eq!(ping.preferred_derp_latency.unwrap().nanos, 5_000_000);
            assert_eq!(u.deleted_agents[0].name, "gone");
        }
        ("tunnel_network_settings", Some(tunnel_message::Msg::NetworkSettings(n))) => {
            assert_eq!(m.rpc.unwrap().msg_id, 7);
            assert_eq!(
                n.ipv6_settings.as_ref().unwrap().included_routes[0].prefix_length,
                48
            );
            assert_eq!(
                n.ipv4_settings.as_ref().unwrap().excluded_routes[0].mask,
                "255.0.0.0"
            );
            assert!(n.dns_settings.as_ref().unwrap().match_domains_no_search);
        }
        ("tunnel_log", Some(tunnel_message::Msg::Log(l))) => assert_eq!(l.level, 4),
        ("tunnel_start", Some(tunnel_message::Msg::Start(s))) => {
            assert_eq!(s.error_message, "missing api token")
        }
        ("tunnel_stop", Some(tunnel_message::Msg::Stop(s))) => assert!(s.success),
        ("tunnel_wake", Some(tunnel_message::Msg::Wake(codervpn_proto::vpn::WakeResponse {}))) => {}
        other => panic!("unexpected fixture {other:?}"),
    }
}

fn check_manager(name: &str, m: &ManagerMessage) {
    match (name, &m.msg) {
        ("manager_start", Some(manager_message::Msg::Start(s))) => {
            assert_eq!(s.tunnel_file_descriptor, 2);
            assert_eq!(s.headers.len(), 2);
            assert_eq!(s.coder_desktop_version, "0.24.8");
        }
        ("manager_network_settings", Some(manager_message::Msg::NetworkSettings(r))) => {
            assert_eq!(m.rpc.unwrap().response_to, 7);
            assert_eq!(r.error_message, "nope");
        }
        ("manager_get_peer_update", Some(manager_message::Msg::GetPeerUpdate(_)))
        | ("manager_stop", Some(manager_message::Msg::Stop(_)))
        | ("manager_wake", Some(manager_message::Msg::Wake(_))) => {}
        other => panic!("unexpected fixture {other:?}"),
    }
}
