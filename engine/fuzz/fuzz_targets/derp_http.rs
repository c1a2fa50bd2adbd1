//! Fuzzes the DERP HTTP upgrade exchange (`net/derp/http.rs`): the input as a request head
//! a server reads and as a response head a client reads (split where the head ends).
//!
//! Checks: no panic; `head_end` points inside the input and just past a blank line.

#![no_main]

use codervpn_engine::net::derp::http::{head_end, parse_upgrade_request, parse_upgrade_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let end = head_end(data);
    if let Some(end) = end {
        assert!(end <= data.len() && end >= 4);
        assert_eq!(&data[end - 4..end], b"\r\n\r\n");
    }
    let (head, after) = data.split_at(end.unwrap_or(data.len()));
    let _ = parse_upgrade_request(head);
    let _ = parse_upgrade_response(head, after);
});
