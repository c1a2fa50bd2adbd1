//! Longest-prefix lookup of destination addresses (WireGuard's cryptokey routing table).
//!
//! One hash map per prefix length in use, searched from the longest length down: a lookup
//! costs one masked hash probe per distinct length, and a peer set rarely has more than a
//! handful of lengths (agents are /128 and /32).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Maps prefixes to values; looks addresses up by longest match.
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: Family<u32, T>,
    v6: Family<u128, T>,
}

#[derive(Debug, Clone)]
struct Family<K, T> {
    /// (prefix length, entries keyed by the masked address), longest first.
    by_len: Vec<(u8, HashMap<K, T>)>,
}

impl<K, T> Default for Family<K, T> {
    fn default() -> Self {
        Self { by_len: Vec::new() }
    }
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self {
            v4: Family::default(),
            v6: Family::default(),
        }
    }
}

fn mask4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

impl<K: std::hash::Hash + Eq + Copy, T> Family<K, T> {
    fn insert(&mut self, key: K, len: u8, value: T) -> Option<T> {
        let pos = match self.by_len.iter().position(|(l, _)| *l <= len) {
            Some(p) if self.by_len[p].0 == len => p,
            Some(p) => {
                self.by_len.insert(p, (len, HashMap::new()));
                p
            }
            None => {
                self.by_len.push((len, HashMap::new()));
                self.by_len.len() - 1
            }
        };
        self.by_len[pos].1.insert(key, value)
    }

    fn remove(&mut self, key: K, len: u8) -> Option<T> {
        let pos = self.by_len.iter().position(|(l, _)| *l == len)?;
        let removed = self.by_len[pos].1.remove(&key);
        if self.by_len[pos].1.is_empty() {
            self.by_len.remove(pos);
        }
        removed
    }

    fn lookup(&self, addr: K, mask: impl Fn(K, u8) -> K) -> Option<&T> {
        self.by_len
            .iter()
            .find_map(|(len, map)| map.get(&mask(addr, *len)))
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for (_, map) in &mut self.by_len {
            map.retain(|_, v| keep(v));
        }
        self.by_len.retain(|(_, m)| !m.is_empty());
    }
}

impl<T> AllowedIps<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts `net` (its host bits are ignored); returns the value it replaced.
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        let len = net.prefix_len();
        match net {
            IpNet::V4(n) => self.v4.insert(mask4(n.addr().to_bits(), len), len, value),
            IpNet::V6(n) => self.v6.insert(mask6(n.addr().to_bits(), len), len, value),
        }
    }

    pub fn remove(&mut self, net: IpNet) -> Option<T> {
        let len = net.prefix_len();
        match net {
            IpNet::V4(n) => self.v4.remove(mask4(n.addr().to_bits(), len), len),
            IpNet::V6(n) => self.v6.remove(mask6(n.addr().to_bits(), len), len),
        }
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(a.to_bits(), mask4),
            IpAddr::V6(a) => self.v6.lookup(a.to_bits(), mask6),
        }
    }

    /// Drops every entry whose value fails `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.v4.retain(&mut keep);
        self.v6.retain(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_for_v4_and_v6() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/8"), 1);
        t.insert(net("10.1.0.0/16"), 2);
        t.insert(net("10.1.2.3/32"), 3);
        t.insert(net("fd60:627a:a42b::/48"), 4);
        t.insert(net("fd60:627a:a42b:101::/128"), 5);
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(&1));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(&2));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&3));
        assert_eq!(t.lookup(ip("fd60:627a:a42b::7")), Some(&4));
        assert_eq!(t.lookup(ip("fd60:627a:a42b:101::")), Some(&5));
        assert_eq!(t.lookup(ip("11.0.0.1")), None);
        assert_eq!(t.lookup(ip("fd7a::1")), None);
    }

    #[test]
    fn default_routes_match_everything_of_their_family() {
        let mut t = AllowedIps::new();
        t.insert(net("0.0.0.0/0"), 1);
        t.insert(net("::/0"), 2);
        assert_eq!(t.lookup(ip("1.2.3.4")), Some(&1));
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(&2));
    }

    #[test]
    fn host_bits_of_an_inserted_prefix_are_ignored() {
        let mut t = AllowedIps::new();
        t.insert(net("192.168.1.77/24"), 1);
        assert_eq!(t.lookup(ip("192.168.1.1")), Some(&1));
        assert_eq!(t.remove(net("192.168.1.0/24")), Some(1));
        assert_eq!(t.lookup(ip("192.168.1.1")), None);
    }

    #[test]
    fn reinserting_a_prefix_moves_it_to_the_new_value() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(net("10.0.0.0/24"), 1), None);
        assert_eq!(t.insert(net("10.0.0.0/24"), 2), Some(1));
        assert_eq!(t.lookup(ip("10.0.0.5")), Some(&2));
    }

    #[test]
    fn retain_drops_a_peers_prefixes() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/24"), 1);
        t.insert(net("10.0.1.0/24"), 2);
        t.insert(net("fd00::/64"), 1);
        t.retain(|v| *v != 1);
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        assert_eq!(t.lookup(ip("fd00::1")), None);
        assert_eq!(t.lookup(ip("10.0.1.1")), Some(&2));
    }
}
