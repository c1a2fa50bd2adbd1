//! Answering DNS messages from a [`Zone`] (tailnet.md §10.2). Bytes in, bytes out.
//!
//! | query | answer |
//! |---|---|
//! | fewer than 12 bytes, or QR = 1 | dropped (`None`) |
//! | opcode other than QUERY | NOTIMP |
//! | QDCOUNT ≠ 1, or a section that does not parse | FORMERR |
//! | EDNS version > 0 | BADVERS, with our OPT |
//! | name outside every served suffix, or class other than IN / ANY | REFUSED |
//! | AAAA of a host | the host's addresses, TTL [`TTL`] |
//! | SOA at the apex | the SOA |
//! | any other type of an existing name (host, apex, empty non-terminal) | NOERROR, no answers, SOA in authority |
//! | a name under a served suffix that does not exist | NXDOMAIN, SOA in authority |
//!
//! The question and the owner names of the answers keep the query's case (0x20 mixed case);
//! the SOA's owner is the suffix part of the question name, in the question's case.

use std::net::Ipv6Addr;

use hickory_proto::op::{
    Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::AAAA;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use tracing::debug;

use crate::zone::{Found, NEGATIVE_TTL, Zone};

/// TTL of AAAA answers, in seconds. Short, so that a removed agent or a moved
/// `<workspace>.S.` shortcut stops resolving within a couple of seconds; the resolver is
/// in-process, so re-asking is cheap.
pub const TTL: u32 = 2;

/// The UDP payload size we advertise in EDNS (the DNS Flag Day 2020 value).
pub const DEFAULT_UDP_PAYLOAD: u16 = 1232;

/// Largest UDP response to a query without EDNS (RFC 1035).
const PLAIN_UDP_LIMIT: u16 = 512;

/// How the query arrived, which bounds the response size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `max_payload`: our UDP payload size, advertised in EDNS (values below 512 count as
    /// 512). A response larger than 512 (no EDNS) or min(client's, ours) is truncated.
    Udp { max_payload: u16 },
    /// No size limit beyond 65535; framing is the caller's ([`crate::tcp`]).
    Tcp,
}

impl Transport {
    /// UDP with [`DEFAULT_UDP_PAYLOAD`].
    pub const UDP: Self = Self::Udp {
        max_payload: DEFAULT_UDP_PAYLOAD,
    };
}

/// What a response said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// NOERROR with answers.
    Answer,
    /// NOERROR, no answers, SOA in authority.
    NoData,
    NxDomain,
    Refused,
    FormErr,
    NotImp,
    BadVers,
    /// Our own failure to encode a response (not expected to happen).
    ServFail,
}

/// A response written by [`Zone::answer_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub outcome: Outcome,
    /// TC was set: the answer did not fit and was left out.
    pub truncated: bool,
}

impl Zone {
    /// The response to one DNS message, or `None` when it is to be dropped (a response, or
    /// fewer than 12 bytes). Never panics.
    pub fn answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.answer_into(query, transport, &mut out).map(|_| out)
    }

    /// Like [`Zone::answer`], writing into `out` (cleared first) so its buffer can be reused.
    /// `None` (and `out` empty) when the message is dropped.
    pub fn answer_into(
        &self,
        query: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Option<Answered> {
        out.clear();
        let mut decoder = BinDecoder::new(query);
        let Ok(header) = Header::read(&mut decoder) else {
            debug!(
                len = query.len(),
                "dns: dropped a message shorter than a header"
            );
            return None;
        };
        if header.metadata.message_type == MessageType::Response {
            debug!(id = header.metadata.id, "dns: dropped a response");
            return None;
        }
        if header.metadata.op_code != OpCode::Query {
            debug!(id = header.metadata.id, op = %header.metadata.op_code, "dns: NOTIMP");
            return Some(header_only(out, &header.metadata, ResponseCode::NotImp));
        }
        if header.counts.queries != 1 {
            debug!(
                id = header.metadata.id,
                qdcount = header.counts.queries,
                "dns: FORMERR"
            );
            return Some(header_only(out, &header.metadata, ResponseCode::FormErr));
        }
        let Some((question, edns)) = read_rest(&mut decoder, &header) else {
            debug!(
                id = header.metadata.id,
                "dns: FORMERR, message does not parse"
            );
            return Some(header_only(out, &header.metadata, ResponseCode::FormErr));
        };
        Some(self.respond(&header.metadata, question, edns, transport, out))
    }

    fn respond(
        &self,
        request: &Metadata,
        question: Query,
        client_edns: Option<Edns>,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Answered {
        let ours = match transport {
            Transport::Udp { max_payload } => max_payload.max(PLAIN_UDP_LIMIT),
            Transport::Tcp => DEFAULT_UDP_PAYLOAD,
        };
        let limit = match (transport, &client_edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp { .. }, None) => usize::from(PLAIN_UDP_LIMIT),
            (Transport::Udp { .. }, Some(edns)) => {
                usize::from(edns.max_payload().max(PLAIN_UDP_LIMIT).min(ours))
            }
        };

        let mut msg = Message::response(request.id, OpCode::Query);
        msg.metadata.recursion_desired = request.recursion_desired;
        msg.metadata.checking_disabled = request.checking_disabled;
        if client_edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(ours);
            msg.edns = Some(edns);
        }
        let outcome = match client_edns.as_ref().map(Edns::version) {
            Some(1..) => {
                msg.metadata.response_code = ResponseCode::BADVERS;
                Outcome::BadVers
            }
            Some(0) | None => self.fill(&mut msg, &question),
        };
        msg.add_query(question);
        let answered = emit(&mut msg, outcome, limit, out);
        // Formatting happens only when DEBUG is on for this crate.
        if let Some(q) = msg.queries.first() {
            debug!(
                id = request.id,
                name = %q.name(),
                qtype = %q.query_type(),
                outcome = ?answered.outcome,
                truncated = answered.truncated,
                "dns: answered",
            );
        }
        answered
    }

    /// Sets the response code, AA and the records of `msg` for `question`.
    fn fill(&self, msg: &mut Message, question: &Query) -> Outcome {
        let name = question.name();
        let mut labels: [&[u8]; 128] = [&[]; 128];
        let mut count = 0;
        for label in name.iter() {
            // A 255-byte name has at most 127 labels; `get_mut` keeps this panic-free anyway.
            let Some(slot) = labels.get_mut(count) else {
                break;
            };
            *slot = label;
            count += 1;
        }
        let labels = &labels[..count];

        let class_ok = matches!(question.query_class(), DNSClass::IN | DNSClass::ANY);
        let found = match class_ok {
            true => self.find(labels),
            false => Found::Outside,
        };
        let Found::Inside {
            suffix,
            suffix_labels,
            host,
            exists,
        } = found
        else {
            msg.metadata.response_code = ResponseCode::Refused;
            return Outcome::Refused;
        };

        msg.metadata.authoritative = true;
        let qtype = question.query_type();
        if let (Some(addrs), RecordType::AAAA) = (host, qtype) {
            msg.answers.extend(addrs.iter().map(|a| aaaa(name, *a)));
            return Outcome::Answer;
        }
        // The apex, in the question's case.
        let apex = Name::from_labels(name.iter().skip(count.saturating_sub(suffix_labels)))
            .unwrap_or_else(|_| suffix.soa.mname.clone());
        let soa = Record::from_rdata(apex, NEGATIVE_TTL, RData::SOA(suffix.soa.clone()));
        if count == suffix_labels && qtype == RecordType::SOA {
            msg.answers.push(soa);
            return Outcome::Answer;
        }
        msg.authorities.push(soa);
        match exists {
            true => Outcome::NoData,
            false => {
                msg.metadata.response_code = ResponseCode::NXDomain;
                Outcome::NxDomain
            }
        }
    }
}

/// The question (QDCOUNT is 1) and the client's EDNS, or `None` if any section fails to
/// parse (including a second OPT record).
fn read_rest(decoder: &mut BinDecoder<'_>, header: &Header) -> Option<(Query, Option<Edns>)> {
    let op = header.metadata.op_code;
    let question = Query::read(decoder).ok()?;
    let counts = header.counts;
    Message::read_records(decoder, usize::from(counts.answers), false, op).ok()?;
    Message::read_records(decoder, usize::from(counts.authorities), false, op).ok()?;
    let (_, edns, _) =
        Message::read_records(decoder, usize::from(counts.additionals), true, op).ok()?;
    Some((question, edns))
}

fn aaaa(name: &Name, addr: Ipv6Addr) -> Record {
    Record::from_rdata(name.clone(), TTL, RData::AAAA(AAAA(addr)))
}

/// Encodes `msg` into `out`; if it is larger than `limit`, encodes it again without answers
/// and authorities, with TC set.
fn emit(msg: &mut Message, outcome: Outcome, limit: usize, out: &mut Vec<u8>) -> Answered {
    if encode(msg, out) && out.len() <= limit {
        return Answered {
            outcome,
            truncated: false,
        };
    }
    msg.answers.clear();
    msg.authorities.clear();
    msg.metadata.truncation = true;
    if !encode(msg, out) {
        // Header, one question and an OPT always encode; should they not, say so in the
        // smallest message there is.
        return header_only(out, &msg.metadata, ResponseCode::ServFail);
    }
    Answered {
        outcome,
        truncated: true,
    }
}

fn encode(msg: &Message, out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut encoder = BinEncoder::new(out);
    let ok = msg.emit(&mut encoder).is_ok();
    if !ok {
        out.clear();
    }
    ok
}

/// A 12-byte response: the request's id, opcode, RD and CD, no sections.
fn header_only(out: &mut Vec<u8>, request: &Metadata, rcode: ResponseCode) -> Answered {
    out.clear();
    out.extend_from_slice(&request.id.to_be_bytes());
    let op = u8::from(request.op_code) & 0x0f;
    out.push(0x80 | op << 3 | u8::from(request.recursion_desired));
    out.push(u8::from(request.checking_disabled) << 4 | rcode.low());
    out.extend_from_slice(&[0; 8]);
    let outcome = match rcode {
        ResponseCode::NotImp => Outcome::NotImp,
        ResponseCode::FormErr => Outcome::FormErr,
        _ => Outcome::ServFail,
    };
    Answered {
        outcome,
        truncated: false,
    }
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
