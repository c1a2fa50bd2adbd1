//! Fuzzes the SOCKS5 server's parsers (`device/userspace/socks5.rs`): the input as a
//! method-selection greeting, as a username/password message (RFC 1929) and as a request.
//!
//! Checks: no panic; a whole message says how much it consumed (never more than the input),
//! parses the same from exactly those bytes, and one byte fewer is either incomplete or
//! refused for the same reason it would be with more (a parser never asks for fewer bytes
//! than a message needs).

#![no_main]

use codervpn_engine::device::userspace::socks5::{parse_greeting, parse_request, parse_user_pass};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((methods, used))) = parse_greeting(data) {
        assert!(used <= data.len() && used >= 2);
        assert_eq!(methods.len(), used - 2);
        let again = parse_greeting(&data[..used]).expect("the same bytes parse");
        assert_eq!(again, Some((methods, used)));
        assert!(matches!(parse_greeting(&data[..used - 1]), Ok(None)));
    }
    if let Ok(Some((user, pass, used))) = parse_user_pass(data) {
        assert!(used <= data.len());
        assert_eq!(used, 3 + user.len() + pass.len());
        assert!(!user.is_empty() && !pass.is_empty());
        let again = parse_user_pass(&data[..used]).expect("the same bytes parse");
        assert_eq!(again, Some((user, pass, used)));
        assert!(matches!(parse_user_pass(&data[..used - 1]), Ok(None)));
    }
    if let Ok(Some((request, used))) = parse_request(data) {
        assert!(used <= data.len());
        let again = parse_request(&data[..used]).expect("the same bytes parse");
        assert_eq!(again, Some((request, used)));
        assert!(!matches!(parse_request(&data[..used - 1]), Ok(Some(_))));
    }
});
