//! Writes the seed corpora under `seeds/<target>/` (next to this crate's Cargo.toml).
//!
//!     cargo run --example gen_seeds
//!
//! The files are committed; rerun this after a schema change and commit what changed.
//! Every map holds at most one entry so that the output is byte-for-byte reproducible
//! (prost encodes `HashMap`s in iteration order).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use codervpn_proto::frame::encode_frame;
use codervpn_proto::header::{Role, build_header};
use codervpn_proto::version::VersionList;
use codervpn_proto::{tailnet, vpn};
use prost::Message;

fn frame<M: Message>(msg: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    if let Err(e) = encode_frame(msg, "seed", &mut out) {
        panic!("seed does not encode: {e}");
    }
    out.to_vec()
}

fn rpc(msg_id: u64, response_to: u64) -> Option<vpn::Rpc> {
    Some(vpn::Rpc {
        msg_id,
        response_to,
    })
}

fn uuid(n: u8) -> Vec<u8> {
    (0..16).map(|i| i ^ n).collect()
}

fn manager_messages() -> Vec<vpn::ManagerMessage> {
    use vpn::manager_message::Msg;
    vec![
        vpn::ManagerMessage {
            rpc: rpc(1, 0),
            msg: Some(Msg::Start(vpn::StartRequest {
                tunnel_file_descriptor: 3,
                coder_url: "https://coder.example.com".into(),
                api_token: "abcdef-0123456789".into(),
                headers: vec![vpn::start_request::Header {
                    name: "X-Forwarded-For".into(),
                    value: "127.0.0.1".into(),
                }],
                device_id: "device-1".into(),
                device_os: "Linux".into(),
                coder_desktop_version: "0.6.0".into(),
            })),
        },
        vpn::ManagerMessage {
            rpc: rpc(2, 0),
            msg: Some(Msg::GetPeerUpdate(vpn::GetPeerUpdate {})),
        },
        vpn::ManagerMessage {
            rpc: rpc(0, 1),
            msg: Some(Msg::NetworkSettings(vpn::NetworkSettingsResponse {
                success: false,
                error_message: "no route".into(),
            })),
        },
        vpn::ManagerMessage {
            rpc: rpc(3, 0),
            msg: Some(Msg::Wake(vpn::WakeRequest {})),
        },
        vpn::ManagerMessage {
            rpc: rpc(4, 0),
            msg: Some(Msg::Stop(vpn::StopRequest {})),
        },
    ]
}

fn tunnel_messages() -> Vec<vpn::TunnelMessage> {
    use vpn::network_settings_request::{
        DnsSettings, IPv4Settings, IPv6Settings, i_pv4_settings, i_pv6_settings,
    };
    use vpn::tunnel_message::Msg;
    vec![
        vpn::TunnelMessage {
            rpc: rpc(0, 7),
            msg: None,
        },
        vpn::TunnelMessage {
            rpc: None,
            msg: Some(Msg::Log(vpn::Log {
                level: 2,
                message: "derp connection lost".into(),
                logger_names: vec!["tunnel".into(), "derp".into()],
                fields: vec![vpn::log::Field {
                    name: "region".into(),
                    value: "999".into(),
                }],
            })),
        },
        vpn::TunnelMessage {
            rpc: None,
            msg: Some(Msg::PeerUpdate(vpn::PeerUpdate {
                upserted_workspaces: vec![vpn::Workspace {
                    id: uuid(1),
                    name: "dev".into(),
                    status: 3,
                }],
                upserted_agents: vec![vpn::Agent {
                    id: uuid(2),
                    name: "main".into(),
                    workspace_id: uuid(1),
                    fqdn: vec!["main.dev.me.coder.".into()],
                    ip_addrs: vec!["fd60:627a:a42b::1".into()],
                    last_handshake: Some(prost_types::Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 5,
                    }),
                    last_ping: Some(vpn::LastPing {
                        latency: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: 25_000_000,
                        }),
                        did_p2p: true,
                        preferred_derp: "Coder".into(),
                        preferred_derp_latency: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: -1,
                        }),
                    }),
                }],
                deleted_workspaces: vec![vpn::Workspace {
                    id: uuid(3),
                    ..Default::default()
                }],
                deleted_agents: vec![vpn::Agent {
                    id: uuid(4),
                    ..Default::default()
                }],
            })),
        },
        vpn::TunnelMessage {
            rpc: rpc(1, 0),
            msg: Some(Msg::NetworkSettings(vpn::NetworkSettingsRequest {
                tunnel_overhead_bytes: 80,
                mtu: 1280,
                dns_settings: Some(DnsSettings {
                    servers: vec!["fd60:627a:a42b::53".into()],
                    search_domains: vec!["coder.".into()],
                    domain_name: "coder".into(),
                    match_domains: vec!["coder.".into()],
                    match_domains_no_search: false,
                }),
                tunnel_remote_address: "127.0.0.1".into(),
                ipv4_settings: Some(IPv4Settings {
                    addrs: vec!["100.64.0.1".into()],
                    subnet_masks: vec!["255.255.255.255".into()],
                    router: "100.64.0.1".into(),
                    included_routes: vec![i_pv4_settings::IPv4Route {
                        destination: "100.64.0.0".into(),
                        mask: "255.192.0.0".into(),
                        router: "100.64.0.1".into(),
                    }],
                    excluded_routes: vec![],
                }),
                ipv6_settings: Some(IPv6Settings {
                    addrs: vec!["fd60:627a:a42b::1".into()],
                    prefix_lengths: vec![128, 48],
                    included_routes: vec![i_pv6_settings::IPv6Route {
                        destination: "fd60:627a:a42b::".into(),
                        prefix_length: 48,
                        router: String::new(),
                    }],
                    excluded_routes: vec![],
                }),
            })),
        },
        vpn::TunnelMessage {
            rpc: rpc(0, 1),
            msg: Some(Msg::Start(vpn::StartResponse {
                success: true,
                error_message: String::new(),
            })),
        },
        vpn::TunnelMessage {
            rpc: rpc(0, 3),
            msg: Some(Msg::Wake(vpn::WakeResponse {})),
        },
        vpn::TunnelMessage {
            rpc: rpc(0, 4),
            msg: Some(Msg::Stop(vpn::StopResponse {
                success: false,
                error_message: "already stopped".into(),
            })),
        },
    ]
}

fn tailnet_node() -> tailnet::Node {
    tailnet::Node {
        id: 42,
        as_of: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        key: [b"np".as_slice(), &[7u8; 32]].concat(),
        disco: format!("discokey:{}", "ab".repeat(32)),
        preferred_derp: 999,
        derp_latency: HashMap::from([("999-v4".to_string(), 0.025)]),
        derp_forced_websocket: HashMap::from([(999, "blocked".to_string())]),
        addresses: vec!["fd60:627a:a42b::2/128".into()],
        allowed_ips: vec!["fd60:627a:a42b::2/128".into()],
        endpoints: vec!["192.0.2.1:41641".into()],
    }
}

fn tailnet_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use tailnet::coordinate_response::PeerUpdate;
    use tailnet::derp_map::{HomeParams, Region, region::Node as DerpNode};
    let coordinate = tailnet::CoordinateResponse {
        peer_updates: vec![
            PeerUpdate {
                id: uuid(2),
                node: Some(tailnet_node()),
                kind: 1,
                reason: String::new(),
            },
            PeerUpdate {
                id: uuid(5),
                node: None,
                kind: 2,
                reason: "disconnected".into(),
            },
        ],
        error: String::new(),
    };
    let workspace_update = tailnet::WorkspaceUpdate {
        upserted_workspaces: vec![tailnet::Workspace {
            id: uuid(1),
            name: "dev".into(),
            status: 3,
        }],
        upserted_agents: vec![tailnet::Agent {
            id: uuid(2),
            name: "main".into(),
            workspace_id: uuid(1),
        }],
        deleted_workspaces: vec![],
        deleted_agents: vec![tailnet::Agent {
            id: uuid(4),
            ..Default::default()
        }],
    };
    let derp_map = tailnet::DerpMap {
        home_params: Some(HomeParams {
            region_score: HashMap::from([(999, 1.0)]),
        }),
        regions: HashMap::from([(
            999,
            Region {
                region_id: 999,
                embedded_relay: true,
                region_code: "coder".into(),
                region_name: "Coder".into(),
                avoid: false,
                nodes: vec![DerpNode {
                    name: "999a".into(),
                    region_id: 999,
                    host_name: "coder.example.com".into(),
                    stun_port: -1,
                    derp_port: 443,
                    force_http: false,
                    ..Default::default()
                }],
            },
        )]),
    };
    vec![
        ("coordinate_response", coordinate.encode_to_vec()),
        ("workspace_update", workspace_update.encode_to_vec()),
        ("derp_map", derp_map.encode_to_vec()),
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    if let Err(e) = fs::write(&path, bytes) {
        panic!("write {}: {e}", path.display());
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");

    // frame_decoder: one schedule byte, then a stream of frames.
    let dir = root.join("frame_decoder");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut all = Vec::new();
    for (i, m) in manager_messages().iter().enumerate() {
        let f = frame(m);
        write(
            &dir,
            &format!("manager_{i}"),
            &[[0x07].as_slice(), &f].concat(),
        );
        all.extend_from_slice(&f);
    }
    for (i, m) in tunnel_messages().iter().enumerate() {
        let f = frame(m);
        write(
            &dir,
            &format!("tunnel_{i}"),
            &[[0x07].as_slice(), &f].concat(),
        );
        all.extend_from_slice(&f);
    }
    // The whole conversation, cut in a few ways.
    for schedule in [0x00u8, 0x0b, 0x14, 0x37] {
        write(
            &dir,
            &format!("stream_{schedule:02x}"),
            &[[schedule].as_slice(), &all].concat(),
        );
    }
    // Edge cases: a zero-length frame, a cut body, a cut prefix, an oversize prefix.
    write(&dir, "zero_length", &[0x07, 0, 0, 0, 0]);
    write(&dir, "truncated_body", &[0x07, 0, 0, 0, 9, 1]);
    write(&dir, "truncated_prefix", &[0x02, 0, 0]);
    write(&dir, "too_long", &[0x07, 0x01, 0, 0, 1]);

    // header: handshake lines, then text that is a version list or two lists split by ';'.
    let dir = root.join("header");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let current = VersionList::current();
    write(
        &dir,
        "manager_current",
        build_header(Role::Manager, &current).as_bytes(),
    );
    write(
        &dir,
        "tunnel_current",
        build_header(Role::Tunnel, &current).as_bytes(),
    );
    write(&dir, "manager_1.3_2.1", b"codervpn manager 1.3,2.1\n");
    write(&dir, "tunnel_1.1", b"codervpn tunnel 1.1\n");
    write(&dir, "incompatible", b"codervpn manager 2.0,3.0\n");
    write(&dir, "bad_preamble", b"ssh manager 1.1\n");
    write(&dir, "cr", b"codervpn manager 1.3\r\n");
    write(
        &dir,
        "two_lines",
        b"codervpn tunnel 1.3\ncodervpn manager 1.2\n",
    );
    write(&dir, "list", b"1.1,2.3,3.2");
    write(&dir, "negotiate", b"1.3,2.1;1.0,2.4");

    // tailnet_messages: one encoded message each.
    let dir = root.join("tailnet_messages");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for (name, bytes) in tailnet_seeds() {
        write(&dir, name, &bytes);
    }

    println!("wrote seeds under {}", root.display());
}
