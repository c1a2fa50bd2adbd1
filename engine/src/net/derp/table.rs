//! The relay table: which connection serves which key, and who must hear that a peer left
//! (Go: `registerClient`, `unregisterClient`, `notePeerSendLocked`,
//! `notePeerGoneFromRegionLocked`). Plain data, owned by one task of the server shell.

use std::collections::HashMap;

use super::keys::NodePublicKey;

/// A server-wide connection number, unique per accepted connection (Go: `connNum`).
pub type ConnId = u64;

/// Connections of every key, and the keys each key has sent to.
#[derive(Debug, Default)]
pub struct RelayTable {
    /// Connections per key in registration order; the last one is active (Go's
    /// `lastWriterIsActive` policy, minus switching on activity).
    clients: HashMap<NodePublicKey, Vec<ConnId>>,
    /// src → dst → the dst connection that src last sent to (Go: `sentTo`).
    sent_to: HashMap<NodePublicKey, HashMap<NodePublicKey, ConnId>>,
}

/// A peer-gone frame the table wants written to connection `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerGoneNotice {
    /// The connection to write to.
    pub to: ConnId,
    /// The key that left.
    pub gone: NodePublicKey,
}

impl RelayTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds connection `conn` for `key`; it becomes the active one. Returns whether `key`
    /// now has more than one connection.
    pub fn register(&mut self, key: NodePublicKey, conn: ConnId) -> bool {
        let conns = self.clients.entry(key).or_default();
        conns.retain(|c| *c != conn);
        conns.push(conn);
        conns.len() > 1
    }

    /// Removes connection `conn` of `key`. When it was the key's last connection, every
    /// peer `key` sent packets to — on the very connection it sent to, if still there —
    /// is owed a peer-gone (reason: disconnected); those notices are returned.
    pub fn unregister(&mut self, key: NodePublicKey, conn: ConnId) -> Vec<PeerGoneNotice> {
        let Some(conns) = self.clients.get_mut(&key) else {
            return Vec::new();
        };
        conns.retain(|c| *c != conn);
        if !conns.is_empty() {
            return Vec::new();
        }
        self.clients.remove(&key);
        let Some(sent) = self.sent_to.remove(&key) else {
            return Vec::new();
        };
        let mut notices: Vec<PeerGoneNotice> = sent
            .into_iter()
            .filter(|(dst, dst_conn)| {
                self.clients
                    .get(dst)
                    .is_some_and(|conns| conns.contains(dst_conn))
            })
            .map(|(_, to)| PeerGoneNotice { to, gone: key })
            .collect();
        notices.sort_by_key(|n| n.to);
        notices
    }

    /// Records that `src` sent to `dst` over connection `dst_conn`.
    pub fn note_sent(&mut self, src: NodePublicKey, dst: NodePublicKey, dst_conn: ConnId) {
        self.sent_to.entry(src).or_default().insert(dst, dst_conn);
    }

    /// The connection packets for `key` go to.
    pub fn active(&self, key: &NodePublicKey) -> Option<ConnId> {
        self.clients.get(key).and_then(|c| c.last().copied())
    }

    /// Every connection of `key`.
    pub fn connections(&self, key: &NodePublicKey) -> &[ConnId] {
        self.clients.get(key).map_or(&[], Vec::as_slice)
    }

    /// Keys with at least one connection, with their active connection.
    pub fn active_routes(&self) -> impl Iterator<Item = (NodePublicKey, ConnId)> + '_ {
        self.clients
            .iter()
            .filter_map(|(k, c)| c.last().map(|conn| (*k, *conn)))
    }

    /// Number of connected keys.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no key is connected.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> NodePublicKey {
        NodePublicKey::from_bytes([b; 32])
    }

    #[test]
    fn last_registered_connection_is_active() {
        let mut t = RelayTable::new();
        assert!(!t.register(key(1), 10));
        assert!(t.register(key(1), 11));
        assert_eq!(t.active(&key(1)), Some(11));
        assert!(t.unregister(key(1), 11).is_empty());
        assert_eq!(t.active(&key(1)), Some(10));
    }

    #[test]
    fn receivers_of_a_departed_sender_get_peer_gone() {
        // Go: TestSendFreeze's peer-gone half / notePeerGoneFromRegionLocked.
        let (a, b, c) = (key(1), key(2), key(3));
        let mut t = RelayTable::new();
        t.register(a, 1);
        t.register(b, 2);
        t.register(c, 3);
        t.note_sent(a, b, 2);
        t.note_sent(a, c, 3);
        t.note_sent(b, a, 1);
        let notices = t.unregister(a, 1);
        assert_eq!(
            notices,
            vec![
                PeerGoneNotice { to: 2, gone: a },
                PeerGoneNotice { to: 3, gone: a }
            ]
        );
    }

    #[test]
    fn peers_that_only_sent_to_the_departed_get_no_peer_gone() {
        let (a, b) = (key(1), key(2));
        let mut t = RelayTable::new();
        t.register(a, 1);
        t.register(b, 2);
        t.note_sent(b, a, 1);
        assert!(t.unregister(a, 1).is_empty());
    }

    #[test]
    fn peer_gone_skips_a_receiver_that_reconnected_since() {
        let (a, b) = (key(1), key(2));
        let mut t = RelayTable::new();
        t.register(a, 1);
        t.register(b, 2);
        t.note_sent(a, b, 2);
        t.unregister(b, 2);
        t.register(b, 3);
        assert!(t.unregister(a, 1).is_empty());
    }

    #[test]
    fn peer_gone_waits_for_the_last_duplicate_connection() {
        let (a, b) = (key(1), key(2));
        let mut t = RelayTable::new();
        t.register(a, 1);
        t.register(a, 4);
        t.register(b, 2);
        t.note_sent(a, b, 2);
        assert!(t.unregister(a, 4).is_empty());
        assert_eq!(t.unregister(a, 1), vec![PeerGoneNotice { to: 2, gone: a }]);
        assert!(t.is_empty() || t.active(&a).is_none());
    }
}
