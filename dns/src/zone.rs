//! The zone: names built from workspace state (tailnet.md §10.1), immutable once built.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv6Addr;

use hickory_proto::rr::Name;
use hickory_proto::rr::rdata::SOA;
use tracing::warn;

use crate::addr::{CODER_DNS_ADDR, coder_addr};
use crate::config::ZoneConfig;

/// The Coder Connect marker's labels below the suffix (`tailnet.IsCoderConnectEnabledFmtString`
/// filled with the suffix).
pub const CONNECT_MARKER: &str = "is.coder--connect--enabled--right--now";

/// Longest name in presentation form without the trailing dot (255 bytes on the wire).
const MAX_NAME_LEN: usize = 253;

/// TTL of the SOA and its MINIMUM: how long resolvers cache NXDOMAIN / NODATA (RFC 2308).
pub const NEGATIVE_TTL: u32 = 2;

/// One agent as the workspace state knows it. The number of agents in its workspace is
/// counted from the list the zone is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The agent's UUID bytes.
    pub id: [u8; 16],
    pub name: String,
    pub workspace: String,
    /// The workspace owner's username.
    pub owner: String,
}

/// A name the zone could not serve; the rest of the zone is built without it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("agent {agent_id}: {what} {value:?} is not a DNS label: {reason}")]
    BadLabel {
        agent_id: Uuid,
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("agent {agent_id}: name {name:?} is longer than 253 characters")]
    TooLong { agent_id: Uuid, name: String },
}

/// A UUID shown in its hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(pub [u8; 16]);

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a name is in the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A host: its AAAA records.
    Host(&'a [Ipv6Addr]),
    /// The name exists without records (the apex, or an empty non-terminal such as
    /// `w1.me.coder.`).
    NoData,
    /// Under a served suffix, but not in the zone.
    NxDomain,
    /// Outside every served suffix.
    Refused,
}

/// The names of one snapshot of workspace state. Built once, never changed: a new state
/// builds a new zone (see [`crate::SharedZone`]).
#[derive(Debug)]
pub struct Zone {
    config: ZoneConfig,
    /// Served suffixes, most labels first (so `a.coder` wins over `coder`).
    suffixes: Vec<Suffix>,
    /// Names relative to the suffix, lower case, as wire-format labels without the root byte.
    /// The empty key is the apex.
    entries: HashMap<Box<[u8]>, Entry>,
    fqdns: BTreeMap<[u8; 16], Vec<String>>,
    rejected: Vec<NameError>,
    serial: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Host(Box<[Ipv6Addr]>),
    /// Exists, no records: the apex or an empty non-terminal.
    Empty,
}

#[derive(Debug)]
pub(crate) struct Suffix {
    /// Lower-case labels.
    labels: Vec<Box<[u8]>>,
    /// SOA data for the negative answers of this suffix.
    pub(crate) soa: SOA,
}

/// Where a query name falls.
pub(crate) enum Found<'z> {
    Outside,
    /// Under `suffixes()[suffix]`, which has `suffix_labels` labels.
    Inside {
        suffix: &'z Suffix,
        suffix_labels: usize,
        host: Option<&'z [Ipv6Addr]>,
        exists: bool,
    },
}

impl Zone {
    /// Builds the zone for `agents` under every served suffix of `config`.
    pub fn new(config: ZoneConfig, agents: &[AgentInfo]) -> Self {
        let mut builder = Builder::default();
        builder.insert(CONNECT_MARKER.split('.'), CODER_DNS_ADDR);

        // Agents per workspace, counting each agent id once (first entry wins).
        let mut seen = BTreeMap::new();
        for agent in agents {
            seen.entry(agent.id).or_insert(agent);
        }
        let mut per_workspace: HashMap<(String, String), usize> = HashMap::new();
        for agent in seen.values() {
            *per_workspace.entry(workspace_key(agent)).or_default() += 1;
        }

        let longest_suffix = config.served_suffixes().map(str::len).max().unwrap_or(0);
        let mut fqdns = BTreeMap::new();
        let mut rejected = Vec::new();
        for agent in seen.values() {
            let count = per_workspace
                .get(&workspace_key(agent))
                .copied()
                .unwrap_or(0);
            let names = match relative_names(agent, count) {
                Ok(names) => names,
                Err(err) => {
                    warn!(agent = %agent.name, error = %err, "agent left out of DNS");
                    rejected.push(err);
                    continue;
                }
            };
            let addr = coder_addr(agent.id);
            let mut list = Vec::with_capacity(names.len());
            for name in names {
                if name.len() + 1 + longest_suffix > MAX_NAME_LEN {
                    let err = NameError::TooLong {
                        agent_id: Uuid(agent.id),
                        name: format!("{name}.{}", config.suffix()),
                    };
                    warn!(agent = %agent.name, error = %err, "DNS name left out");
                    rejected.push(err);
                    continue;
                }
                builder.insert(name.split('.'), addr);
                list.push(format!("{name}.{}.", config.suffix()));
            }
            list.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            list.dedup();
            fqdns.insert(agent.id, list);
        }

        let serial = builder.serial();
        let mut suffixes: Vec<Suffix> = config
            .served_suffixes()
            .map(|text| Suffix::new(text, serial))
            .collect();
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.labels.len()));
        Self {
            config,
            suffixes,
            entries: builder.entries,
            fqdns,
            rejected,
            serial,
        }
    }

    /// A zone with only the apex and the Coder Connect marker.
    pub fn empty(config: ZoneConfig) -> Self {
        Self::new(config, &[])
    }

    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// The SOA serial: a hash of the zone's contents, so it changes when they do.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Names that could not be served.
    pub fn rejected(&self) -> &[NameError] {
        &self.rejected
    }

    /// Every FQDN of the agent under the deployment suffix, with the trailing dot, sorted by
    /// length then bytes (the PeerUpdate rule). `None` for an agent not in the zone.
    pub fn agent_fqdns(&self, agent_id: &[u8; 16]) -> Option<&[String]> {
        self.fqdns.get(agent_id).map(Vec::as_slice)
    }

    /// Every host name under the deployment suffix with its addresses, sorted by name (the
    /// map upstream hands to its resolver). Aliases serve the same names.
    pub fn hosts(&self) -> Vec<(String, Vec<Ipv6Addr>)> {
        let mut out: Vec<(String, Vec<Ipv6Addr>)> = self
            .entries
            .iter()
            .filter_map(|(key, entry)| match entry {
                Entry::Host(addrs) => Some((
                    format!("{}{}.", presentation(key), self.config.suffix()),
                    addrs.to_vec(),
                )),
                Entry::Empty => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Looks a name up in presentation form (`w1.coder.`, case-insensitive; the trailing dot
    /// is optional).
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let labels: Vec<&[u8]> = match name.is_empty() {
            true => Vec::new(),
            false => name.split('.').map(str::as_bytes).collect(),
        };
        match self.find(&labels) {
            Found::Outside => Lookup::Refused,
            Found::Inside {
                host: Some(addrs), ..
            } => Lookup::Host(addrs),
            Found::Inside { exists: true, .. } => Lookup::NoData,
            Found::Inside { exists: false, .. } => Lookup::NxDomain,
        }
    }

    /// Finds a name given as its labels (any case). Allocates nothing.
    pub(crate) fn find(&self, labels: &[&[u8]]) -> Found<'_> {
        for suffix in &self.suffixes {
            let k = suffix.labels.len();
            let Some(split) = labels.len().checked_sub(k) else {
                continue;
            };
            let (relative, tail) = labels.split_at(split);
            if !tail
                .iter()
                .zip(&suffix.labels)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
            {
                continue;
            }
            let mut key = [0u8; 256];
            let mut len = 0;
            for label in relative {
                let end = len + 1 + label.len();
                let (Some(slot), Ok(label_len)) =
                    (key.get_mut(len..end), u8::try_from(label.len()))
                else {
                    // Longer than any name: not in the zone.
                    return Found::Inside {
                        suffix,
                        suffix_labels: k,
                        host: None,
                        exists: false,
                    };
                };
                slot[0] = label_len;
                for (dst, src) in slot[1..].iter_mut().zip(label.iter()) {
                    *dst = src.to_ascii_lowercase();
                }
                len = end;
            }
            let entry = self.entries.get(&key[..len]);
            return Found::Inside {
                suffix,
                suffix_labels: k,
                host: match entry {
                    Some(Entry::Host(addrs)) => Some(addrs),
                    Some(Entry::Empty) | None => None,
                },
                exists: entry.is_some(),
            };
        }
        Found::Outside
    }
}

impl Suffix {
    fn new(text: &str, serial: u32) -> Self {
        let labels: Vec<Box<[u8]>> = text.split('.').map(|l| l.as_bytes().into()).collect();
        // The config validated every label, so these names parse; fall back to the root
        // rather than panic should that ever change.
        let apex =
            Name::from_labels(labels.iter().map(|l| &l[..])).unwrap_or_else(|_| Name::root());
        let hostmaster = Name::from_labels(
            std::iter::once(&b"hostmaster"[..]).chain(labels.iter().map(|l| &l[..])),
        )
        .unwrap_or_else(|_| Name::root());
        let soa = SOA::new(apex, hostmaster, serial, 3600, 600, 86400, NEGATIVE_TTL);
        Self { labels, soa }
    }
}

/// `a.b.` for the wire key of `a.b` (empty for the apex).
fn presentation(mut key: &[u8]) -> String {
    let mut out = String::new();
    while let Some((&len, rest)) = key.split_first() {
        let (label, rest) = rest.split_at(usize::from(len).min(rest.len()));
        out.push_str(&String::from_utf8_lossy(label));
        out.push('.');
        key = rest;
    }
    out
}

/// Lower-cased `(owner, workspace)`: a workspace is unique per owner.
fn workspace_key(agent: &AgentInfo) -> (String, String) {
    (
        agent.owner.to_ascii_lowercase(),
        agent.workspace.to_ascii_lowercase(),
    )
}

/// The agent's names relative to the suffix, lower case, without dots at either end.
fn relative_names(agent: &AgentInfo, agents_in_workspace: usize) -> Result<Vec<String>, NameError> {
    let id = Uuid(agent.id);
    let agent_label = label(id, "agent name", &agent.name)?;
    let workspace = label(id, "workspace name", &agent.workspace)?;
    let owner = label(id, "owner username", &agent.owner)?;
    let mut names = vec![
        format!("{agent_label}.{workspace}.me"),
        format!("{agent_label}.{workspace}.{owner}"),
    ];
    if agents_in_workspace == 1 {
        names.push(workspace);
    }
    Ok(names)
}

fn label(agent_id: Uuid, what: &'static str, value: &str) -> Result<String, NameError> {
    let bad = |reason| NameError::BadLabel {
        agent_id,
        what,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value.len() > 63 {
        return Err(bad("it is longer than 63 bytes"));
    }
    if value.contains('.') {
        return Err(bad("it contains a dot"));
    }
    Ok(value.to_ascii_lowercase())
}

/// Every FQDN of one agent under `suffix`, sorted by length then bytes (the PeerUpdate rule),
/// without building a zone. `agents_in_workspace` is the number of agents in its workspace.
pub fn agent_fqdns(
    agent: &AgentInfo,
    agents_in_workspace: usize,
    suffix: &str,
) -> Result<Vec<String>, NameError> {
    let suffix = suffix
        .strip_suffix('.')
        .unwrap_or(suffix)
        .to_ascii_lowercase();
    let mut out: Vec<String> = relative_names(agent, agents_in_workspace)?
        .into_iter()
        .map(|name| format!("{name}.{suffix}."))
        .collect();
    out.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    out.dedup();
    Ok(out)
}

#[derive(Default)]
struct Builder {
    entries: HashMap<Box<[u8]>, Entry>,
}

impl Builder {
    /// Adds `addr` to the host named by `labels` (already lower case) and marks every name
    /// between it and the apex as existing.
    fn insert<'a>(&mut self, labels: impl Iterator<Item = &'a str>, addr: Ipv6Addr) {
        let mut key = Vec::new();
        let mut starts = Vec::new();
        for label in labels {
            starts.push(key.len());
            key.push(label.len() as u8);
            key.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
        match self.entries.get_mut(&key[..]) {
            Some(Entry::Host(addrs)) => {
                if !addrs.contains(&addr) {
                    let mut list = addrs.to_vec();
                    list.push(addr);
                    list.sort();
                    *addrs = list.into_boxed_slice();
                }
            }
            Some(entry @ Entry::Empty) => *entry = Entry::Host(Box::new([addr])),
            None => {
                self.entries.insert(
                    key.clone().into_boxed_slice(),
                    Entry::Host(Box::new([addr])),
                );
            }
        }
        // Parents (each a suffix of the key at a label start), down to the apex (empty key).
        for start in starts.into_iter().skip(1).chain(std::iter::once(key.len())) {
            self.entries
                .entry(key[start..].into())
                .or_insert(Entry::Empty);
        }
    }

    /// FNV-1a over the sorted entries.
    fn serial(&self) -> u32 {
        let mut sorted: Vec<_> = self.entries.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut hash: u32 = 0x811c_9dc5;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                hash ^= u32::from(*b);
                hash = hash.wrapping_mul(0x0100_0193);
            }
        };
        for (key, entry) in sorted {
            eat(key);
            match entry {
                Entry::Host(addrs) => addrs.iter().for_each(|a| eat(&a.octets())),
                Entry::Empty => eat(&[0xff]),
            }
        }
        hash
    }
}

#[cfg(test)]
#[path = "zone_tests.rs"]
mod tests;
