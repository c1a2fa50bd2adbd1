//! The in-tunnel DNS responder: `Zone::answer_into` in a zone of 100 agents (one per
//! workspace, so every workspace has its `<workspace>.coder.` shortcut).
//!
//! `cargo bench -p codervpn-benches --bench dns`
//!
//! Measured on the 2-core dev machine (shared, load average 2–5), `--warm-up-time 1
//! --measurement-time 3`, range of the medians of four runs: `aaaa_workspace` 0.58–0.86 µs
//! (1.2–1.7 M queries/s per core), `nxdomain` 0.84–1.44 µs (0.7–1.2 M queries/s per core).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use codervpn_dns::{AgentInfo, Outcome, Transport, Zone, ZoneConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn zone_with_agents(n: u16) -> Zone {
    let agents: Vec<AgentInfo> = (0..n)
        .map(|i| {
            let mut id = [0x11u8; 16];
            id[6..8].copy_from_slice(&i.to_be_bytes());
            AgentInfo {
                id,
                name: format!("agent{i}"),
                workspace: format!("workspace{i}"),
                owner: "someowner".into(),
            }
        })
        .collect();
    Zone::new(ZoneConfig::default(), &agents)
}

/// A query as a stub resolver sends it: RD set, one question, class IN, no EDNS.
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut wire = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    wire.extend_from_slice(&qtype.to_be_bytes());
    wire.extend_from_slice(&1u16.to_be_bytes());
    wire
}

const AAAA: u16 = 28;

fn answer_100_agents(c: &mut Criterion) {
    let zone = zone_with_agents(100);
    let cases = [
        (
            "aaaa_workspace",
            query("workspace42.coder.", AAAA),
            Outcome::Answer,
        ),
        ("nxdomain", query("nope.coder.", AAAA), Outcome::NxDomain),
    ];

    let mut g = c.benchmark_group("dns_answer_100_agents");
    g.throughput(Throughput::Elements(1));
    for (name, wire, want) in &cases {
        let mut out = Vec::with_capacity(512);
        let got = zone.answer_into(wire, Transport::UDP, &mut out).unwrap();
        assert_eq!(got.outcome, *want, "{name}");
        g.bench_function(*name, |b| {
            b.iter(|| {
                black_box(zone.answer_into(black_box(wire), Transport::UDP, &mut out));
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, answer_100_agents);
criterion_main!(benches);
