//! Fuzzes the handshake line and version lists of `codervpn-proto`.
//!
//! * The input is fed one byte at a time into [`HeaderReader`]; each complete line is
//!   validated with [`validate_header`] expecting either role as the peer, against
//!   `VersionList::current()`. After `HeaderTooLong` a fresh reader carries on.
//! * The input (lossily) as UTF-8 text, each of its lines, and each space-separated word
//!   goes through [`VersionList::parse`]; a list that parses must print (`to_string`) to text
//!   that parses to an equal list. Text of the form `a;b` also checks that negotiation is
//!   symmetric.
//!
//! Must never panic.

#![no_main]

use codervpn_proto::header::{
    HeaderReader, HeaderTooLong, MAX_HEADER_LEN, PeerHeader, Role, build_header, validate_header,
};
use codervpn_proto::version::{Version, VersionList};
use libfuzzer_sys::fuzz_target;

fn check_line(line: &str, ours: &VersionList) {
    let mut accepted = 0;
    for role in [Role::Manager, Role::Tunnel] {
        match validate_header(line, role, ours) {
            Ok(peer) => {
                accepted += 1;
                check_peer(line, role, ours, &peer);
            }
            Err(e) => {
                assert_eq!(e.header, line);
                let text = e.to_string();
                assert!(text.starts_with("validate header ("), "{text}");
            }
        }
    }
    // The role word can match only one role.
    assert!(accepted <= 1, "{line:?} accepted for both roles");
}

fn check_peer(line: &str, role: Role, ours: &VersionList, peer: &PeerHeader) {
    let prefix = format!("codervpn {role} ");
    assert!(line.starts_with(&prefix), "{line:?} accepted as {role}");
    check_list_invariants(&peer.versions);
    assert_eq!(ours.negotiate(&peer.versions), Some(peer.negotiated));
    assert!(
        ours.versions()
            .iter()
            .any(|v| v.major == peer.negotiated.major)
    );
    assert!(
        peer.versions
            .versions()
            .iter()
            .any(|v| v.major == peer.negotiated.major)
    );

    // The line the peer would build from what we understood validates the same way.
    let rebuilt = build_header(role, &peer.versions);
    let rebuilt = rebuilt
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("{rebuilt:?}"));
    match validate_header(rebuilt, role, ours) {
        Ok(again) => assert_eq!(&again, peer, "{line:?} vs rebuilt {rebuilt:?}"),
        Err(e) => panic!("rebuilt header {rebuilt:?} (from {line:?}) is refused: {e}"),
    }
}

fn check_list_invariants(list: &VersionList) {
    let versions = list.versions();
    assert!(!versions.is_empty());
    for v in versions {
        assert!(v.major >= 1, "{v:?}");
        assert_eq!(Version::parse(&v.to_string()), Ok(*v));
    }
    for pair in versions.windows(2) {
        assert!(pair[0].major < pair[1].major, "{versions:?}");
    }
    assert_eq!(VersionList::new(versions.to_vec()).as_ref(), Ok(list));
}

/// Parses `text`; a parsed list must survive `to_string` and parse again to an equal list.
fn check_list(text: &str, ours: &VersionList) -> Option<VersionList> {
    let list = match VersionList::parse(text) {
        Ok(list) => list,
        Err(e) => {
            let _ = e.to_string();
            return None;
        }
    };
    check_list_invariants(&list);
    let printed = list.to_string();
    match VersionList::parse(&printed) {
        Ok(again) => {
            assert_eq!(again, list, "{text:?} printed as {printed:?}");
            assert_eq!(again.to_string(), printed);
        }
        Err(e) => panic!("{text:?} parsed but its printed form {printed:?} does not: {e}"),
    }
    if let Some(v) = ours.negotiate(&list) {
        let mine = ours.versions().iter().find(|o| o.major == v.major);
        let theirs = list.versions().iter().find(|t| t.major == v.major);
        match (mine, theirs) {
            (Some(m), Some(t)) => assert_eq!(v.minor, m.minor.min(t.minor)),
            _ => panic!("negotiated {v} is not in both lists"),
        }
    }
    Some(list)
}

fuzz_target!(|data: &[u8]| {
    let ours = VersionList::current();

    let mut reader = HeaderReader::new();
    for &byte in data {
        match reader.push(byte) {
            Ok(None) => {
                assert_ne!(byte, b'\n');
                assert!(reader.len() < MAX_HEADER_LEN);
            }
            Ok(Some(line)) => {
                assert_eq!(byte, b'\n');
                assert!(reader.is_empty());
                assert!(!line.contains('\n'));
                check_line(&line, &ours);
            }
            Err(HeaderTooLong) => {
                assert_eq!(reader.len(), MAX_HEADER_LEN);
                let _ = HeaderTooLong.to_string();
                reader = HeaderReader::new();
            }
        }
    }

    let text = String::from_utf8_lossy(data);
    check_list(&text, &ours);
    for line in text.split('\n') {
        check_list(line, &ours);
        for word in line.split(' ') {
            check_list(word, &ours);
        }
    }
    if let Some((a, b)) = text.split_once(';')
        && let (Some(a), Some(b)) = (check_list(a, &ours), check_list(b, &ours))
    {
        assert_eq!(a.negotiate(&b), b.negotiate(&a), "{a} vs {b}");
        assert_eq!(
            a.negotiate(&a).map(|v| v.major),
            a.versions().last().map(|v| v.major)
        );
    }
});
