//! Fuzzes `Zone::answer` of `codervpn-dns` over UDP and over a TCP stream.
//!
//! Input layout: `[config] ++ bytes`.
//! * `config` (one byte): the low 2 bits pick our UDP payload size (0, 512, 1232 or 4096);
//!   bits 2–4 pick the largest chunk the TCP stream is cut into (1, 2, 3, 7, 16, 64, 512
//!   bytes or everything at once).
//! * `bytes` is answered as one UDP message, and as a TCP stream made of `bytes` framed
//!   with its 2-byte length followed by `bytes` again, raw (so arbitrary framing is tried
//!   too).
//!
//! Checks:
//! * no panic;
//! * a message shorter than 12 bytes or with QR set is dropped, and nothing else is;
//! * every response parses (hickory-proto), has QR set and echoes the query's id;
//! * a UDP response is never larger than 512 bytes, or than our payload size when larger;
//! * the TCP stream yields exactly the messages that were framed, and each framed
//!   response decodes back to what `answer` returned;
//! * for the framed copy of `bytes`, the TCP answer equals the UDP answer (our payload
//!   1232) whenever the UDP one was not truncated.

#![no_main]

use std::sync::OnceLock;

use codervpn_dns::tcp::{TcpDecoder, encode_tcp};
use codervpn_dns::{AgentInfo, DEFAULT_UDP_PAYLOAD, Transport, Zone, ZoneConfig};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

const PAYLOADS: [u16; 4] = [0, 512, 1232, 4096];
const CHUNKS: [usize; 8] = [1, 2, 3, 7, 16, 64, 512, usize::MAX];

/// Suffix `coder` and alias `coderlan`; `w1` with one agent, `w2` with two, and `dev`
/// shared by 40 owners (40 addresses for `dev.coder.`, enough to need truncation).
fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let agent = |a: u8, b: u8, name: &str, workspace: &str, owner: &str| {
            let mut id = [0u8; 16];
            id[6] = a;
            id[7] = b;
            AgentInfo {
                id,
                name: name.into(),
                workspace: workspace.into(),
                owner: owner.into(),
            }
        };
        let mut agents = vec![
            agent(1, 1, "w1a1", "w1", "testy"),
            agent(2, 1, "w2a1", "w2", "testy"),
            agent(2, 2, "w2a2", "w2", "testy"),
        ];
        for i in 0..40u8 {
            agents.push(agent(100 + i, 1, "a", "dev", &format!("o{i}")));
        }
        Zone::new(ZoneConfig::default(), &agents)
    })
}

fn dropped(msg: &[u8]) -> bool {
    msg.len() < 12 || msg[2] & 0x80 != 0
}

fn check_response(query: &[u8], out: Option<&[u8]>) {
    let Some(out) = out else {
        assert!(dropped(query), "a query was dropped: {query:02x?}");
        return;
    };
    assert!(!dropped(query), "a dropped message was answered");
    assert!(out.len() >= 12);
    assert_eq!(out[..2], query[..2], "id echoed");
    assert_eq!(out[2] & 0x80, 0x80, "QR set");
    if let Err(e) = Message::from_vec(out) {
        panic!("response does not parse: {e}\nquery {query:02x?}\nresponse {out:02x?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, bytes)) = data.split_first() else {
        return;
    };
    let zone = zone();
    let ours = PAYLOADS[usize::from(config & 3)];
    let chunk = CHUNKS[usize::from((config >> 2) & 7)];

    // UDP, with the payload size the config byte picked.
    let udp = zone.answer(bytes, Transport::Udp { max_payload: ours });
    check_response(bytes, udp.as_deref());
    if let Some(out) = &udp {
        assert!(
            out.len() <= usize::from(ours.max(512)),
            "{} > {ours}",
            out.len()
        );
    }

    // UDP with our default payload, to compare with TCP below.
    let udp_default = zone.answer(
        bytes,
        Transport::Udp {
            max_payload: DEFAULT_UDP_PAYLOAD,
        },
    );

    // TCP: the framed copy of `bytes`, then `bytes` raw.
    let mut stream = Vec::new();
    let framed = encode_tcp(bytes, &mut stream).is_ok();
    stream.extend_from_slice(bytes);
    let mut decoder = TcpDecoder::new();
    let mut messages: Vec<Vec<u8>> = Vec::new();
    let mut replies = Vec::new();
    let mut answers = Vec::new();
    for piece in stream.chunks(chunk.min(stream.len()).max(1)) {
        decoder.push(piece);
        while let Some(msg) = decoder.next_message() {
            let out = zone.answer(msg, Transport::Tcp);
            check_response(msg, out.as_deref());
            if let Some(out) = &out {
                encode_tcp(out, &mut replies).expect("a response fits a TCP frame");
                answers.push(out.clone());
            }
            messages.push(msg.to_vec());
        }
    }

    // The decoder yields what a whole-stream parse yields.
    let mut want = Vec::new();
    let mut rest = &stream[..];
    while let [hi, lo, body @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some(msg) = body.get(..len) else { break };
        want.push(msg.to_vec());
        rest = &body[len..];
    }
    assert_eq!(messages, want, "TCP messages");
    let _ = decoder.finish();

    // Framed responses decode back to the responses.
    let mut back = TcpDecoder::new();
    back.push(&replies);
    for answer in &answers {
        assert_eq!(back.next_message(), Some(&answer[..]));
    }
    assert!(back.next_message().is_none());

    // TCP agrees with an untruncated UDP answer for the same message.
    if framed {
        let tcp_first = messages
            .first()
            .filter(|m| m[..] == *bytes)
            .and_then(|m| zone.answer(m, Transport::Tcp));
        if let Some(udp) = &udp_default {
            let truncated = udp[2] & 0x02 != 0;
            if !truncated {
                assert_eq!(tcp_first.as_ref(), Some(udp), "TCP and UDP answers differ");
            }
        }
    }
});
