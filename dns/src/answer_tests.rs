use std::net::Ipv6Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use super::*;
use crate::config::ZoneConfig;
use crate::tcp::{TcpDecoder, encode_tcp};
use crate::zone::AgentInfo;

fn test_uuid(a: u8, b: u8) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[6] = a;
    id[7] = b;
    id
}

fn agent(id: [u8; 16], name: &str, workspace: &str, owner: &str) -> AgentInfo {
    AgentInfo {
        id,
        name: name.into(),
        workspace: workspace.into(),
        owner: owner.into(),
    }
}

/// Suffix `coder` (+ `coderlan`); owner `testy`; `w1` with one agent, `w2` with two.
fn zone() -> Zone {
    Zone::new(
        ZoneConfig::default(),
        &[
            agent(test_uuid(1, 1), "w1a1", "w1", "testy"),
            agent(test_uuid(2, 1), "w2a1", "w2", "testy"),
            agent(test_uuid(2, 2), "w2a2", "w2", "testy"),
        ],
    )
}

fn query_msg(name: &str, qtype: RecordType) -> Message {
    let mut msg = Message::new(0x1234, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    msg
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    query_msg(name, qtype).to_vec().unwrap()
}

fn with_edns(name: &str, qtype: RecordType, payload: u16) -> Vec<u8> {
    let mut msg = query_msg(name, qtype);
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    msg.set_edns(edns);
    msg.to_vec().unwrap()
}

fn ask(zone: &Zone, wire: &[u8], transport: Transport) -> Message {
    let out = zone.answer(wire, transport).expect("a response");
    Message::from_vec(&out).expect("response parses")
}

fn ask_udp(zone: &Zone, wire: &[u8]) -> Message {
    ask(zone, wire, Transport::UDP)
}

fn aaaas(msg: &Message) -> Vec<Ipv6Addr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn labels(name: &Name) -> Vec<Vec<u8>> {
    name.iter().map(<[u8]>::to_vec).collect()
}

fn ip(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

fn assert_soa_authority(msg: &Message, apex: &str) {
    assert!(msg.answers.is_empty(), "no answers: {msg}");
    let [soa] = &msg.authorities[..] else {
        panic!("one SOA in authority: {msg}");
    };
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.name.to_string(), apex);
    assert_eq!(soa.ttl, NEGATIVE_TTL);
}

#[test]
fn aaaa_for_known_name_answers_its_address_with_ttl_2() {
    let resp = ask_udp(&zone(), &query("w1.coder.", RecordType::AAAA));
    assert_eq!(resp.metadata.id, 0x1234);
    assert_eq!(resp.metadata.message_type, MessageType::Response);
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert!(resp.metadata.authoritative);
    assert!(resp.metadata.recursion_desired, "RD copied");
    assert!(!resp.metadata.recursion_available);
    assert!(!resp.metadata.truncation);
    assert_eq!(aaaas(&resp), [ip("fd60:627a:a42b:101::")]);
    assert_eq!(resp.answers[0].ttl, TTL);
    assert_eq!(TTL, 2);
    assert!(resp.authorities.is_empty());
}

#[test]
fn upstream_mctest_names_answer_uuid_address() {
    // Upstream: TestTunnelAllWorkspaceUpdatesController_Initial.
    let zone = Zone::new(
        ZoneConfig::new("mctest").unwrap(),
        &[agent(
            crate::parse_uuid("00000000-0000-0101-0000-000000000000").unwrap(),
            "w1a1",
            "w1",
            "testy",
        )],
    );
    for name in ["w1a1.w1.me.mctest.", "w1a1.w1.testy.mctest.", "w1.mctest."] {
        let resp = ask_udp(&zone, &query(name, RecordType::AAAA));
        assert_eq!(aaaas(&resp), [ip("fd60:627a:a42b:101::")], "{name}");
    }
}

#[test]
fn coder_connect_marker_answers_dns_address() {
    let resp = ask_udp(
        &zone(),
        &query(
            "is.coder--connect--enabled--right--now.coder.",
            RecordType::AAAA,
        ),
    );
    assert_eq!(aaaas(&resp), [ip("fd60:627a:a42b::53")]);
}

#[test]
fn a_query_for_known_name_is_nodata_with_soa() {
    let resp = ask_udp(&zone(), &query("w2a1.w2.testy.coder.", RecordType::A));
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert!(resp.metadata.authoritative);
    assert_soa_authority(&resp, "coder.");
}

#[test]
fn any_other_type_for_known_name_is_nodata_with_soa() {
    for qtype in [
        RecordType::MX,
        RecordType::TXT,
        RecordType::NS,
        RecordType::SOA,
        RecordType::HTTPS,
        RecordType::ANY,
        RecordType::Unknown(65000),
    ] {
        let resp = ask_udp(&zone(), &query("w1a1.w1.me.coder.", qtype));
        assert_eq!(
            resp.metadata.response_code,
            ResponseCode::NoError,
            "{qtype}"
        );
        assert_soa_authority(&resp, "coder.");
    }
}

#[test]
fn empty_non_terminal_is_nodata_not_nxdomain() {
    let resp = ask_udp(&zone(), &query("w2.me.coder.", RecordType::AAAA));
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert_soa_authority(&resp, "coder.");
}

#[test]
fn soa_at_apex_is_answered() {
    let resp = ask_udp(&zone(), &query("coder.", RecordType::SOA));
    let [soa] = &resp.answers[..] else {
        panic!("one SOA answer: {resp}");
    };
    let RData::SOA(data) = &soa.data else {
        panic!("SOA data: {soa}");
    };
    assert_eq!(data.serial, zone().serial());
    assert_eq!(data.minimum, NEGATIVE_TTL);
}

#[test]
fn unknown_name_under_suffix_is_nxdomain_with_soa() {
    for name in ["nope.coder.", "w2.coder.", "x.w1.me.coder."] {
        let resp = ask_udp(&zone(), &query(name, RecordType::AAAA));
        assert_eq!(
            resp.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert!(resp.metadata.authoritative);
        assert_soa_authority(&resp, "coder.");
    }
}

#[test]
fn name_outside_served_suffixes_is_refused() {
    for name in ["example.com.", "coder.example.", "."] {
        let resp = ask_udp(&zone(), &query(name, RecordType::AAAA));
        assert_eq!(resp.metadata.response_code, ResponseCode::Refused, "{name}");
        assert!(!resp.metadata.authoritative);
        assert!(resp.answers.is_empty() && resp.authorities.is_empty());
        assert_eq!(resp.queries.len(), 1, "question echoed");
    }
}

#[test]
fn class_other_than_in_is_refused() {
    let mut msg = query_msg("w1.coder.", RecordType::AAAA);
    msg.queries[0].set_query_class(DNSClass::CH);
    let resp = ask_udp(&zone(), &msg.to_vec().unwrap());
    assert_eq!(resp.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn coderlan_alias_answers_like_the_suffix() {
    let resp = ask_udp(&zone(), &query("w1a1.w1.testy.coderlan.", RecordType::AAAA));
    assert_eq!(aaaas(&resp), [ip("fd60:627a:a42b:101::")]);
    let resp = ask_udp(&zone(), &query("nope.coderlan.", RecordType::AAAA));
    assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain);
    assert_soa_authority(&resp, "coderlan.");
}

#[test]
fn alias_turned_off_refuses_coderlan_names() {
    let zone = Zone::new(
        ZoneConfig::default().without_aliases(),
        &[agent(test_uuid(1, 1), "w1a1", "w1", "testy")],
    );
    let resp = ask_udp(&zone, &query("w1.coderlan.", RecordType::AAAA));
    assert_eq!(resp.metadata.response_code, ResponseCode::Refused);
    let resp = ask_udp(&zone, &query("w1.coder.", RecordType::AAAA));
    assert_eq!(aaaas(&resp).len(), 1);
}

#[test]
fn mixed_case_question_is_echoed_in_question_and_owner_names() {
    let name = "W1A1.w1.TeStY.CoDeR.";
    let resp = ask_udp(&zone(), &query(name, RecordType::AAAA));
    let want = labels(&Name::from_ascii(name).unwrap());
    assert_eq!(labels(resp.queries[0].name()), want);
    assert_eq!(labels(&resp.answers[0].name), want);
    assert_eq!(aaaas(&resp), [ip("fd60:627a:a42b:101::")]);

    let resp = ask_udp(&zone(), &query("NoPe.CoDeR.", RecordType::AAAA));
    assert_eq!(
        labels(resp.queries[0].name()),
        [b"NoPe".to_vec(), b"CoDeR".to_vec()]
    );
    assert_eq!(labels(&resp.authorities[0].name), [b"CoDeR".to_vec()]);
}

#[test]
fn edns_query_gets_our_opt_record() {
    let resp = ask_udp(&zone(), &with_edns("w1.coder.", RecordType::AAAA, 4096));
    let edns = resp.edns.as_ref().expect("OPT echoed");
    assert_eq!(edns.max_payload(), DEFAULT_UDP_PAYLOAD);
    assert_eq!(edns.version(), 0);
    let resp = ask(
        &zone(),
        &with_edns("w1.coder.", RecordType::AAAA, 4096),
        Transport::Udp { max_payload: 1400 },
    );
    assert_eq!(resp.edns.map(|e| e.max_payload()), Some(1400));

    let plain = ask_udp(&zone(), &query("w1.coder.", RecordType::AAAA));
    assert!(plain.edns.is_none(), "no OPT without one in the query");
}

#[test]
fn edns_version_above_0_is_badvers() {
    let mut msg = query_msg("w1.coder.", RecordType::AAAA);
    let mut edns = Edns::new();
    edns.set_version(1);
    msg.set_edns(edns);
    let resp = ask_udp(&zone(), &msg.to_vec().unwrap());
    // 16 is both BADVERS and BADSIG; hickory decodes it as the latter.
    assert_eq!(u16::from(resp.metadata.response_code), 16);
    assert_eq!(resp.edns.map(|e| e.version()), Some(0));
    assert!(resp.answers.is_empty());
}

/// `dev.coder.` with 40 addresses (40 owners with a single-agent workspace `dev` each):
/// about 1.16 kB with EDNS.
fn big_zone() -> Zone {
    let agents: Vec<AgentInfo> = (0..40u8)
        .map(|i| agent(test_uuid(i + 1, 1), "a", "dev", &format!("o{i}")))
        .collect();
    Zone::new(ZoneConfig::default(), &agents)
}

#[test]
fn udp_response_over_512_without_edns_is_truncated() {
    let zone = big_zone();
    let wire = query("dev.coder.", RecordType::AAAA);
    let out = zone.answer(&wire, Transport::UDP).unwrap();
    assert!(out.len() <= 512);
    let resp = Message::from_vec(&out).unwrap();
    assert!(resp.metadata.truncation);
    assert!(resp.answers.is_empty());
    assert_eq!(resp.queries.len(), 1);
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn udp_limit_is_min_of_client_and_our_payload() {
    let zone = big_zone();
    // Client 4096, ours 1232: fits.
    let resp = ask_udp(&zone, &with_edns("dev.coder.", RecordType::AAAA, 4096));
    assert!(!resp.metadata.truncation);
    assert_eq!(aaaas(&resp).len(), 40);
    // Client 600: truncated.
    let out = zone
        .answer(
            &with_edns("dev.coder.", RecordType::AAAA, 600),
            Transport::UDP,
        )
        .unwrap();
    assert!(out.len() <= 600);
    let resp = Message::from_vec(&out).unwrap();
    assert!(resp.metadata.truncation);
    assert!(resp.edns.is_some(), "OPT kept in a truncated response");
    // Client 4096, ours 512: truncated.
    let resp = ask(
        &zone,
        &with_edns("dev.coder.", RecordType::AAAA, 4096),
        Transport::Udp { max_payload: 512 },
    );
    assert!(resp.metadata.truncation);
    // Client below 512 counts as 512.
    let out = zone
        .answer(
            &with_edns("w1.coder.", RecordType::AAAA, 100),
            Transport::UDP,
        )
        .unwrap();
    assert!(!Message::from_vec(&out).unwrap().metadata.truncation);
}

#[test]
fn tcp_response_is_not_truncated() {
    let resp = ask(
        &big_zone(),
        &query("dev.coder.", RecordType::AAAA),
        Transport::Tcp,
    );
    assert!(!resp.metadata.truncation);
    assert_eq!(aaaas(&resp).len(), 40);
}

#[test]
fn tcp_framed_queries_get_framed_answers() {
    let zone = zone();
    let mut stream = Vec::new();
    encode_tcp(&query("w1.coder.", RecordType::AAAA), &mut stream).unwrap();
    encode_tcp(&query("nope.coder.", RecordType::AAAA), &mut stream).unwrap();
    let mut decoder = TcpDecoder::new();
    let mut replies = Vec::new();
    for byte in &stream {
        decoder.push(std::slice::from_ref(byte));
        while let Some(msg) = decoder.next_message() {
            let out = zone.answer(msg, Transport::Tcp).unwrap();
            encode_tcp(&out, &mut replies).unwrap();
        }
    }
    let mut back = TcpDecoder::new();
    back.push(&replies);
    let first = Message::from_vec(back.next_message().unwrap()).unwrap();
    assert_eq!(aaaas(&first), [ip("fd60:627a:a42b:101::")]);
    let second = Message::from_vec(back.next_message().unwrap()).unwrap();
    assert_eq!(second.metadata.response_code, ResponseCode::NXDomain);
    assert!(back.next_message().is_none());
}

fn header(flags: [u8; 2], counts: [u16; 4]) -> Vec<u8> {
    let mut out = vec![0xab, 0xcd, flags[0], flags[1]];
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out
}

fn rcode_of(out: &[u8]) -> u8 {
    out[3] & 0x0f
}

#[test]
fn malformed_query_with_parseable_header_is_formerr() {
    let mut wire = header([0x01, 0x00], [1, 0, 0, 0]);
    wire.extend_from_slice(&[0x05, b'a']); // label cut short
    let out = zone().answer(&wire, Transport::UDP).unwrap();
    assert_eq!(out.len(), 12);
    assert_eq!(&out[..2], &[0xab, 0xcd]);
    assert_eq!(out[2], 0x81, "QR, opcode QUERY, RD copied");
    assert_eq!(rcode_of(&out), 1);
}

#[test]
fn qdcount_other_than_1_is_formerr() {
    for qd in [0u16, 2, 65535] {
        let mut wire = header([0x00, 0x00], [qd, 0, 0, 0]);
        if qd == 2 {
            let one = query("w1.coder.", RecordType::AAAA);
            wire.extend_from_slice(&one[12..]);
            wire.extend_from_slice(&one[12..]);
        }
        let out = zone().answer(&wire, Transport::UDP).unwrap();
        assert_eq!(rcode_of(&out), 1, "qdcount {qd}");
    }
}

#[test]
fn duplicate_opt_record_is_formerr() {
    let mut wire = with_edns("w1.coder.", RecordType::AAAA, 1232);
    let opt = wire[wire.len() - 11..].to_vec();
    wire.extend_from_slice(&opt);
    wire[11] = 2; // ARCOUNT
    let out = zone().answer(&wire, Transport::UDP).unwrap();
    assert_eq!(rcode_of(&out), 1);
}

#[test]
fn responses_are_dropped() {
    let mut wire = query("w1.coder.", RecordType::AAAA);
    wire[2] |= 0x80;
    assert_eq!(zone().answer(&wire, Transport::UDP), None);
}

#[test]
fn messages_shorter_than_a_header_are_dropped() {
    for len in 0..12 {
        assert_eq!(
            zone().answer(&[0u8; 11][..len], Transport::UDP),
            None,
            "{len}"
        );
    }
}

#[test]
fn opcode_other_than_query_is_notimp() {
    for opcode in [1u8, 2, 4, 5, 15] {
        let mut wire = query("w1.coder.", RecordType::AAAA);
        wire[2] = (wire[2] & 0x87) | opcode << 3;
        let out = zone().answer(&wire, Transport::UDP).unwrap();
        assert_eq!(rcode_of(&out), 4, "opcode {opcode}");
        assert_eq!((out[2] >> 3) & 0x0f, opcode, "opcode echoed");
        assert_eq!(out[2] & 0x80, 0x80);
    }
}

#[test]
fn answer_into_reuses_the_buffer_and_reports_the_outcome() {
    let zone = zone();
    let mut out = Vec::with_capacity(512);
    let got = zone.answer_into(
        &query("w1.coder.", RecordType::AAAA),
        Transport::UDP,
        &mut out,
    );
    assert_eq!(
        got,
        Some(Answered {
            outcome: Outcome::Answer,
            truncated: false
        })
    );
    let first_len = out.len();
    let got = zone.answer_into(
        &query("x.coder.", RecordType::AAAA),
        Transport::UDP,
        &mut out,
    );
    assert_eq!(got.map(|a| a.outcome), Some(Outcome::NxDomain));
    assert_ne!(out.len(), first_len);
    assert_eq!(zone.answer_into(&[1, 2], Transport::UDP, &mut out), None);
    assert!(out.is_empty());
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A deterministic sweep; the fuzz target (dns/fuzz) goes much further.
    let zone = big_zone();
    let seeds = [
        query("w1.coder.", RecordType::AAAA),
        with_edns("DeV.coder.", RecordType::AAAA, 700),
        query("nope.coderlan.", RecordType::SOA),
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..20_000 {
        let mut wire = seeds[i % seeds.len()].clone();
        for _ in 0..(next() % 6) {
            let r = next();
            match r % 4 {
                0 if !wire.is_empty() => {
                    let at = (r >> 8) as usize % wire.len();
                    wire[at] = (r >> 32) as u8;
                }
                1 => wire.push((r >> 8) as u8),
                2 if !wire.is_empty() => {
                    let at = (r >> 8) as usize % wire.len();
                    wire.truncate(at);
                }
                _ => {}
            }
        }
        for transport in [
            Transport::UDP,
            Transport::Udp { max_payload: 0 },
            Transport::Tcp,
        ] {
            if let Some(out) = zone.answer(&wire, transport) {
                assert!(out.len() >= 12);
                assert_eq!(out[..2], wire[..2], "id echoed");
            }
        }
    }
}
