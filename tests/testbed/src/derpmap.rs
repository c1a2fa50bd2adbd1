//! The testbed's DERP map, built once and served in both forms: protobuf (`StreamDERPMaps`)
//! and tailcfg JSON (`/api/v2/workspaceagents/connection`).
//!
//! Built as coderd builds it (coder/coder `tailnet/derpmap.go` `NewDERPMap`, `STUNNodes`):
//! the embedded region holds the relay node `999a` with `STUNPort: -1` (it never serves
//! STUN itself), and each STUN address becomes a `STUNOnly` node `999stun<i>`
//! (`HostName` the address's host, `STUNPort` its port) placed before the relay node.
//! The optional second region ([`crate::region`]) is built the same way, not embedded.

use std::net::SocketAddr;

use codervpn_proto::tailnet::{DerpMap, derp_map};
use serde_json::{Map, Value, json};

use crate::region::{SECOND_REGION_CODE, SECOND_REGION_ID, SECOND_REGION_NAME};
use crate::{EMBEDDED_REGION_ID, EMBEDDED_REGION_NAME};

/// The DERP map of a testbed whose relay is at `host:port` (`/derp`), with a STUN server at
/// `stun` if any.
pub(crate) fn build(host: &str, port: u16, force_http: bool, stun: Option<SocketAddr>) -> DerpMap {
    let embedded = RegionSpec {
        id: EMBEDDED_REGION_ID,
        code: "coder",
        name: EMBEDDED_REGION_NAME,
        embedded_relay: true,
    };
    DerpMap {
        // coderd's DERPMapToProto always sets HomeParams, and Coder's Go client
        // (tailnet.DERPMapFromProto, v2.36.1) dereferences it: a map without one panics it.
        home_params: Some(derp_map::HomeParams::default()),
        regions: [(
            EMBEDDED_REGION_ID,
            embedded.region(host, port, force_http, stun),
        )]
        .into_iter()
        .collect(),
    }
}

/// Adds the second region ([`crate::region`]): its relay at `host:port` (`/derp`), its
/// STUN server at `stun` if any.
pub(crate) fn add_second_region(
    map: &mut DerpMap,
    host: &str,
    port: u16,
    force_http: bool,
    stun: Option<SocketAddr>,
) {
    let second = RegionSpec {
        id: SECOND_REGION_ID,
        code: SECOND_REGION_CODE,
        name: SECOND_REGION_NAME,
        embedded_relay: false,
    };
    map.regions.insert(
        SECOND_REGION_ID,
        second.region(host, port, force_http, stun),
    );
}

/// Sets the map's `HomeParams.RegionScore` (left out of the JSON form when empty; the
/// protobuf form always carries `HomeParams`, as coderd's does).
pub(crate) fn set_region_scores(map: &mut DerpMap, scores: &[(i64, f64)]) {
    map.home_params = Some(derp_map::HomeParams {
        region_score: scores.iter().copied().collect(),
    });
}

struct RegionSpec {
    id: i64,
    code: &'static str,
    name: &'static str,
    embedded_relay: bool,
}

impl RegionSpec {
    /// The region: the STUN-only node (if any), then the relay node `<id>a`.
    fn region(
        &self,
        host: &str,
        port: u16,
        force_http: bool,
        stun: Option<SocketAddr>,
    ) -> derp_map::Region {
        let id = self.id;
        let relay = derp_map::region::Node {
            name: format!("{id}a"),
            region_id: id,
            host_name: host.into(),
            stun_port: -1,
            derp_port: i32::from(port),
            force_http,
            ..Default::default()
        };
        let stun_nodes = stun
            .into_iter()
            .enumerate()
            .map(|(i, addr)| derp_map::region::Node {
                name: format!("{id}stun{i}"),
                region_id: id,
                host_name: addr.ip().to_string(),
                stun_only: true,
                stun_port: i32::from(addr.port()),
                ..Default::default()
            });
        derp_map::Region {
            region_id: id,
            embedded_relay: self.embedded_relay,
            region_code: self.code.into(),
            region_name: self.name.into(),
            avoid: false,
            nodes: stun_nodes.chain([relay]).collect(),
        }
    }
}

/// `map` as tailcfg.DERPMap JSON (field names and `omitempty` as Go writes them).
pub(crate) fn to_json(map: &DerpMap) -> Value {
    let regions: Map<String, Value> = map
        .regions
        .iter()
        .map(|(id, r)| (id.to_string(), region_json(r)))
        .collect();
    let mut v = json!({ "Regions": regions });
    if let Some(home) = map
        .home_params
        .as_ref()
        .filter(|h| !h.region_score.is_empty())
    {
        // tailcfg.DERPHomeParams: `RegionScore map[int]float64`, keys written as strings.
        let scores: Map<String, Value> = home
            .region_score
            .iter()
            .map(|(id, score)| (id.to_string(), json!(score)))
            .collect();
        v["HomeParams"] = json!({ "RegionScore": scores });
    }
    v
}

fn region_json(r: &derp_map::Region) -> Value {
    let mut v = json!({
        "EmbeddedRelay": r.embedded_relay,
        "RegionID": r.region_id,
        "RegionCode": r.region_code,
        "RegionName": r.region_name,
        "Nodes": r.nodes.iter().map(node_json).collect::<Vec<_>>(),
    });
    if r.avoid {
        v["Avoid"] = json!(true);
    }
    v
}

fn node_json(n: &derp_map::region::Node) -> Value {
    let mut v = Map::new();
    v.insert("Name".into(), json!(n.name));
    v.insert("RegionID".into(), json!(n.region_id));
    v.insert("HostName".into(), json!(n.host_name));
    let strings = [
        ("CertName", &n.cert_name),
        ("IPv4", &n.ipv4),
        ("IPv6", &n.ipv6),
        ("STUNTestIP", &n.stun_test_ip),
    ];
    for (key, s) in strings {
        if !s.is_empty() {
            v.insert(key.into(), json!(s));
        }
    }
    for (key, port) in [("STUNPort", n.stun_port), ("DERPPort", n.derp_port)] {
        if port != 0 {
            v.insert(key.into(), json!(port));
        }
    }
    let flags = [
        ("STUNOnly", n.stun_only),
        ("InsecureForTests", n.insecure_for_tests),
        ("ForceHTTP", n.force_http),
        ("CanPort80", n.can_port_80),
    ];
    for (key, on) in flags {
        if on {
            v.insert(key.into(), json!(true));
        }
    }
    Value::Object(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_node_never_serves_stun() {
        let map = build("10.0.0.1", 8080, true, None);
        let nodes = &map.regions[&EMBEDDED_REGION_ID].nodes;
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].stun_port, -1);
        assert!(!nodes[0].stun_only);
    }

    #[test]
    fn stun_address_becomes_a_stun_only_node_before_the_relay() {
        let map = build(
            "10.0.0.1",
            8080,
            true,
            Some("10.0.0.1:3478".parse().unwrap()),
        );
        let nodes = &map.regions[&EMBEDDED_REGION_ID].nodes;
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].name, "999stun0");
        assert!(nodes[0].stun_only);
        assert_eq!(nodes[0].host_name, "10.0.0.1");
        assert_eq!(nodes[0].stun_port, 3478);
        assert_eq!(nodes[0].derp_port, 0);
        assert_eq!(nodes[1].name, "999a");
        assert_eq!(nodes[1].stun_port, -1);
    }

    #[test]
    fn json_uses_tailcfg_names_and_omits_empty_fields() {
        let map = build(
            "10.0.0.1",
            8080,
            true,
            Some("10.0.0.1:3478".parse().unwrap()),
        );
        let v = to_json(&map);
        let region = &v["Regions"]["999"];
        assert_eq!(region["EmbeddedRelay"], true);
        assert_eq!(
            region["Nodes"][0],
            json!({"Name": "999stun0", "RegionID": 999, "HostName": "10.0.0.1",
                   "STUNPort": 3478, "STUNOnly": true})
        );
        assert_eq!(
            region["Nodes"][1],
            json!({"Name": "999a", "RegionID": 999, "HostName": "10.0.0.1",
                   "STUNPort": -1, "DERPPort": 8080, "ForceHTTP": true})
        );
    }

    #[test]
    fn the_protobuf_map_always_carries_home_params_as_coderds_does() {
        let mut map = build("10.0.0.1", 8080, true, None);
        assert!(map.home_params.is_some());
        set_region_scores(&mut map, &[]);
        assert!(map.home_params.is_some());
    }

    #[test]
    fn region_scores_are_home_params_with_string_keys_and_absent_when_empty() {
        let mut map = build("10.0.0.1", 8080, true, None);
        set_region_scores(&mut map, &[]);
        assert!(to_json(&map).get("HomeParams").is_none());
        set_region_scores(&mut map, &[(1000, 2.5)]);
        assert_eq!(
            to_json(&map)["HomeParams"],
            json!({"RegionScore": {"1000": 2.5}})
        );
    }

    #[test]
    fn second_region_has_its_own_stun_node_and_relay() {
        let mut map = build("10.0.0.1", 8080, false, None);
        add_second_region(
            &mut map,
            "10.0.0.1",
            9090,
            false,
            Some("10.0.0.1:3479".parse().unwrap()),
        );
        assert_eq!(map.regions.len(), 2);
        let r = &map.regions[&SECOND_REGION_ID];
        assert!(!r.embedded_relay);
        assert_eq!(r.region_code, "second");
        assert_eq!(r.nodes.len(), 2);
        assert_eq!(r.nodes[0].name, "1000stun0");
        assert!(r.nodes[0].stun_only);
        assert_eq!(r.nodes[0].stun_port, 3479);
        assert_eq!(r.nodes[1].name, "1000a");
        assert_eq!(r.nodes[1].region_id, SECOND_REGION_ID);
        assert_eq!(r.nodes[1].derp_port, 9090);
        assert_eq!(r.nodes[1].stun_port, -1);
        assert!(!r.nodes[1].force_http);
        let v = to_json(&map);
        assert_eq!(v["Regions"]["1000"]["EmbeddedRelay"], false);
        assert_eq!(v["Regions"]["1000"]["RegionCode"], "second");
    }
}
