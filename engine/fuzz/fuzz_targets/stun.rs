//! Fuzzes the STUN codec: the input as a binding response and as a binding request.
//!
//! Checks: no panic; `NotStun` exactly when `is_stun` is false; a response that parses,
//! rebuilt with `binding_response`, parses to the same transaction id and address; a request
//! that parses yields the transaction id at bytes 8..20.

#![no_main]

use codervpn_engine::net::stun::{self, StunError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let is = stun::is_stun(data);
    match stun::parse_response(data) {
        Err(StunError::NotStun { len }) => {
            assert!(!is);
            assert_eq!(len, data.len());
        }
        Err(_) => assert!(is),
        Ok((tx, addr)) => {
            assert!(is);
            let rebuilt = stun::binding_response(tx, addr);
            assert_eq!(stun::parse_response(&rebuilt), Ok((tx, addr)));
        }
    }
    match stun::parse_binding_request(data) {
        Err(StunError::NotStun { .. }) => assert!(!is),
        Err(_) => assert!(is),
        Ok(tx) => {
            assert!(is);
            assert_eq!(&data[8..20], &tx[..]);
        }
    }
});
