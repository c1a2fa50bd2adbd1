//! RPC bookkeeping (codervpn-protocol.md §4): request ids and receive dispatch.

use crate::vpn::Rpc;

/// How a received message is to be treated, from its `rpc` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// No `rpc`: a one-way message (`Log`, unsolicited `PeerUpdate`).
    OneWay,
    /// `response_to != 0`: the reply to our request with that id.
    Reply(u64),
    /// `msg_id != 0`: a request that must be answered exactly once.
    Request(u64),
    /// `rpc` present with both ids 0: dropped and logged.
    Invalid,
}

pub fn classify(rpc: Option<&Rpc>) -> Dispatch {
    match rpc {
        None => Dispatch::OneWay,
        Some(r) if r.response_to != 0 => Dispatch::Reply(r.response_to),
        Some(r) if r.msg_id != 0 => Dispatch::Request(r.msg_id),
        Some(_) => Dispatch::Invalid,
    }
}

/// A side's own request-id counter: 1, 2, 3, …
#[derive(Debug)]
pub struct RequestIds {
    next: u64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self { next: 1 }
    }
}

impl RequestIds {
    pub fn next_id(&mut self) -> u64 {
        let id = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        id
    }
}

/// The `rpc` of a request: only `msg_id` set.
pub fn request(msg_id: u64) -> Rpc {
    Rpc {
        msg_id,
        response_to: 0,
    }
}

/// The `rpc` of a reply: only `response_to` set.
pub fn reply(response_to: u64) -> Rpc {
    Rpc {
        msg_id: 0,
        response_to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_count_up() {
        let mut ids = RequestIds::default();
        assert_eq!([ids.next_id(), ids.next_id(), ids.next_id()], [1, 2, 3]);
    }

    #[test]
    fn dispatch_follows_the_receive_table() {
        assert_eq!(classify(None), Dispatch::OneWay);
        assert_eq!(classify(Some(&reply(5))), Dispatch::Reply(5));
        assert_eq!(classify(Some(&request(33))), Dispatch::Request(33));
        assert_eq!(classify(Some(&Rpc::default())), Dispatch::Invalid);
    }

    #[test]
    fn built_rpcs_never_set_both_ids() {
        assert_eq!(request(9).response_to, 0);
        assert_eq!(reply(9).msg_id, 0);
    }
}
