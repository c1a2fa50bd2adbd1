//! Writes the seed corpus `seeds/answer/` (next to this crate's Cargo.toml).
//!
//!     cargo run --example gen_seeds
//!
//! Each seed is `[config] ++ query` (see `fuzz_targets/answer.rs`). The files are committed.

use std::fs;
use std::path::PathBuf;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut msg = Message::new(0x0a0b, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    let name = Name::from_ascii(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    msg.add_query(Query::query(name, qtype));
    if let Some(payload) = edns {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        msg.set_edns(e);
    }
    msg.to_vec()
        .unwrap_or_else(|e| panic!("seed does not encode: {e}"))
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds/answer");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let seeds: Vec<(&str, u8, Vec<u8>)> = vec![
        (
            "aaaa_shortcut",
            0x02,
            query("w1.coder.", RecordType::AAAA, None),
        ),
        (
            "aaaa_me",
            0x06,
            query("w1a1.w1.me.coder.", RecordType::AAAA, Some(1232)),
        ),
        (
            "aaaa_owner_mixed_case",
            0x0a,
            query("W2A2.w2.TESTY.coder.", RecordType::AAAA, None),
        ),
        (
            "a_nodata",
            0x0e,
            query("w1.coder.", RecordType::A, Some(4096)),
        ),
        (
            "nxdomain_alias",
            0x12,
            query("nope.coderlan.", RecordType::AAAA, None),
        ),
        (
            "refused",
            0x16,
            query("example.com.", RecordType::AAAA, Some(512)),
        ),
        (
            "marker",
            0x1a,
            query(
                "is.coder--connect--enabled--right--now.coder.",
                RecordType::AAAA,
                None,
            ),
        ),
        (
            "truncated",
            0x1e,
            query("dev.coder.", RecordType::AAAA, None),
        ),
        (
            "big_edns",
            0x03,
            query("dev.coder.", RecordType::AAAA, Some(4096)),
        ),
        ("soa_apex", 0x01, query("coder.", RecordType::SOA, None)),
        (
            "empty_non_terminal",
            0x00,
            query("w2.testy.coder.", RecordType::AAAA, None),
        ),
    ];
    for (name, config, wire) in seeds {
        let mut bytes = vec![config];
        bytes.extend_from_slice(&wire);
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    println!("wrote {}", dir.display());
}
