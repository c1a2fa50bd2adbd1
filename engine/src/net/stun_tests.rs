//! STUN codec: RFC 5769 test vectors and the vectors of coder/tailscale `net/stun/stun_test.go`
//! (`responseTests`, `TestIs`, `TestParseBindingRequest`, `TestResponse`).

use std::net::SocketAddr;

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).unwrap_or_else(|e| panic!("test vector: {e}"))
}

/// RFC 5769 §2.2 and §2.3 share this transaction id.
const RFC5769_TX: TxId = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 §2.2 "Sample IPv4 Response": SOFTWARE, XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY,
/// FINGERPRINT.
fn rfc5769_ipv4_response() -> Vec<u8> {
    unhex(
        "0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
         8022000b 74657374 20766563 746f7220
         00200008 0001a147 e112a643
         00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
         80280004 c07d4c96",
    )
}

/// RFC 5769 §2.3 "Sample IPv6 Response".
fn rfc5769_ipv6_response() -> Vec<u8> {
    unhex(
        "01010048 2112a442 b7e7a701 bc34d686 fa87dfae
         8022000b 74657374 20766563 746f7220
         00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
         00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
         80280004 c8fb0b4c",
    )
}

#[test]
fn rfc5769_ipv4_response_maps_to_192_0_2_1_port_32853() {
    let (tx, got) = parse_response(&rfc5769_ipv4_response()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tx, RFC5769_TX);
    assert_eq!(got, addr("192.0.2.1:32853"));
}

#[test]
fn rfc5769_ipv6_response_maps_to_2001_db8_port_32853() {
    let (tx, got) = parse_response(&rfc5769_ipv6_response()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tx, RFC5769_TX);
    assert_eq!(got, addr("[2001:db8:1234:5678:11:2233:4455:6677]:32853"));
}

#[test]
fn fingerprint_matches_rfc5769_vectors() {
    for v in [rfc5769_ipv4_response(), rfc5769_ipv6_response()] {
        let (body, fp) = v.split_at(v.len() - 4);
        let want = u32::from_be_bytes([fp[0], fp[1], fp[2], fp[3]]);
        assert_eq!(fingerprint(&body[..body.len() - 4]), want);
    }
}

/// stun_test.go `responseTests`: (name, packet, tx id, address).
fn upstream_response_vectors() -> Vec<(&'static str, Vec<u8>, &'static str, &'static str)> {
    vec![
        (
            "google-1",
            unhex("0101000c2112a4422360b11e3ec68ffa93e08007002000080001c7866957856f"),
            "2360b11e3ec68ffa93e08007",
            "72.69.33.45:59028",
        ),
        (
            "google-2",
            unhex("0101000c2112a442f9f121cbde7d7c75923ce271002000080001c7876957856f"),
            "f9f121cbde7d7c75923ce271",
            "72.69.33.45:59029",
        ),
        (
            "stun.sipgate.net:10000",
            unhex(
                "010100442112a442482eb64715e8b28eaead6444000100080001e4ab4845212d0004000800012710d90a44980005000800012711d9747a8a802000080001c5b96957856f80220010566f766964612e6f726720302e393600",
            ),
            "482eb64715e8b28eaead6444",
            "72.69.33.45:58539",
        ),
        (
            "stun.powervoip.com:3478",
            unhex(
                "010100242112a4427e57966829f444609d1deaa6000100080001e9d34845212d0004000800010d964d48a9d40005000800010d974d48a9d5",
            ),
            "7e57966829f444609d1deaa6",
            "72.69.33.45:59859",
        ),
        (
            "in-process pion server",
            unhex(
                "010100242112a442ebc2d36ef471217c4f3e308e8022000a656e64706f696e7465720000002000080001ce665e12a44380280004b699bb02010100242112a442",
            ),
            "ebc2d36ef471217c4f3e308e",
            "127.0.0.1:61300",
        ),
        (
            "stuntman-server ipv6",
            unhex(
                "010100482112a44206f56685d28af3e69ce341e200010014000290ce260200d1b4cfc10038b231fffeef96f6802b001400020d962604a880000200d10000000000c57001002000140002b1dc0710a493b23aa785ea38c219620cd714",
            ),
            "06f56685d28af3e69ce341e2",
            "[2602:d1:b4cf:c100:38b2:31ff:feef:96f6]:37070",
        ),
        (
            "software-a",
            unhex(
                "010100142112a442ebc2d36ef471217c4f3e308e8022000161000000002000080001ce665e12a443",
            ),
            "ebc2d36ef471217c4f3e308e",
            "127.0.0.1:61300",
        ),
        (
            "software-abc",
            unhex(
                "010100142112a442ebc2d36ef471217c4f3e308e8022000361626300002000080001ce665e12a443",
            ),
            "ebc2d36ef471217c4f3e308e",
            "127.0.0.1:61300",
        ),
        (
            "no-4in6",
            unhex(
                "010100182112a4424fd5d202dcb37d31fc773306002000140002cd3d2112a4424fd5d202dcb382ce2dc3fcc7",
            ),
            "4fd5d202dcb37d31fc773306",
            "209.180.207.193:60463",
        ),
    ]
}

#[test]
fn upstream_response_vectors_parse() {
    // stun_test.go TestParseResponse
    for (name, packet, tx, want) in upstream_response_vectors() {
        let (got_tx, got) = parse_response(&packet).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(hex::encode(got_tx), tx, "{name}");
        assert_eq!(got, addr(want), "{name}");
    }
}

#[test]
fn is_stun_checks_length_top_bits_and_cookie() {
    // stun_test.go TestIs
    let cookie = "2112a442";
    let cases = [
        (String::new(), false),
        ("00".repeat(20), false),
        (format!("00000000{cookie}{}", "00".repeat(11)), false),
        (format!("00000000{cookie}{}", "00".repeat(12)), true),
        (format!("00000000{cookie}{}666f6f", "00".repeat(12)), true),
        (format!("f0000000{cookie}{}", "00".repeat(12)), false),
        (format!("40000000{cookie}{}", "00".repeat(12)), false),
        (format!("20000000{cookie}{}", "00".repeat(12)), true),
    ];
    for (i, (packet, want)) in cases.iter().enumerate() {
        assert_eq!(is_stun(&unhex(packet)), *want, "case {i}");
    }
}

#[test]
fn request_is_40_bytes_with_software_tailnode_and_fingerprint() {
    let tx = [0x5a; 12];
    let req = binding_request(tx);
    assert_eq!(req.len(), 40);
    assert_eq!(&req[..4], &[0x00, 0x01, 0x00, 20]);
    assert_eq!(&req[4..8], &MAGIC_COOKIE);
    assert_eq!(&req[8..20], &tx);
    assert_eq!(&req[20..24], &[0x80, 0x22, 0x00, 0x08]);
    assert_eq!(&req[24..32], b"tailnode");
    assert_eq!(&req[32..36], &[0x80, 0x28, 0x00, 0x04]);
    assert_eq!(&req[36..], &fingerprint(&req[..32]).to_be_bytes());
    assert!(is_stun(&req));
    // stun_test.go TestParseBindingRequest
    assert_eq!(parse_binding_request(&req), Ok(tx));
}

#[test]
fn request_with_bad_fingerprint_or_software_is_rejected() {
    let mut req = binding_request([1; 12]);
    req[39] ^= 1;
    assert!(matches!(
        parse_binding_request(&req),
        Err(StunError::WrongFingerprint { .. })
    ));
    let mut req = binding_request([1; 12]);
    req[24] = b'T';
    assert_eq!(parse_binding_request(&req), Err(StunError::WrongSoftware));
}

#[test]
fn response_round_trips_for_v4_and_v6() {
    // stun_test.go TestResponse
    for (n, a) in [
        (1u8, "1.2.3.4:254"),
        (2, "1.2.3.4:257"),
        (3, "[1::4]:254"),
        (4, "[1::4]:257"),
    ] {
        let tx = [n; 12];
        let res = binding_response(tx, addr(a));
        assert_eq!(parse_response(&res), Ok((tx, addr(a))), "{a}");
    }
}

#[test]
fn mapped_address_is_the_fallback() {
    let mut p = unhex("0101000c 2112a442 000000000000000000000001");
    p.extend_from_slice(&unhex("00010008 0001 1f90 c0000207")); // 192.0.2.7:8080
    assert_eq!(
        parse_response(&p),
        Ok(([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], addr("192.0.2.7:8080")))
    );
}

#[test]
fn xor_mapped_address_wins_over_mapped_address() {
    // stun.sipgate.net carries both; the XOR one (port 58539) wins over MAPPED (port 58539
    // there too), so build one where they differ.
    let tx = [9; 12];
    let mut p = binding_response(tx, addr("203.0.113.5:4000"));
    p.extend_from_slice(&unhex("00010008 0001 1f90 c0000207"));
    p[3] += 12;
    assert_eq!(parse_response(&p), Ok((tx, addr("203.0.113.5:4000"))));
}

#[test]
fn malformed_responses_are_typed_errors() {
    let good = binding_response([2; 12], addr("192.0.2.1:1"));
    assert_eq!(
        parse_response(&good[..19]),
        Err(StunError::NotStun { len: 19 })
    );
    let mut request = good.clone();
    request[..2].copy_from_slice(&[0x00, 0x01]);
    assert_eq!(
        parse_response(&request),
        Err(StunError::NotSuccessResponse { msg_type: 1 })
    );
    assert_eq!(
        parse_response(&good[..good.len() - 1]),
        Err(StunError::LengthExceedsPacket {
            declared: 12,
            available: 11
        })
    );
    let mut cut_attr = good.clone();
    cut_attr[23] = 0x40; // attribute claims 64 bytes
    assert_eq!(
        parse_response(&cut_attr),
        Err(StunError::MalformedAttributes { offset: 20 })
    );
    let mut family = good.clone();
    family[25] = 3;
    assert_eq!(
        parse_response(&family),
        Err(StunError::BadAddress { family: 3 })
    );
    let empty = unhex("01010000 2112a442 000000000000000000000000");
    assert_eq!(parse_response(&empty), Err(StunError::NoMappedAddress));
}
