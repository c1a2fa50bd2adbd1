//! Which suffixes the zone serves (tailnet.md §10.1–10.2).

/// The suffix used when the deployment's `hostname_suffix` is empty.
pub const DEFAULT_SUFFIX: &str = "coder";

/// The alias served next to the deployment suffix unless turned off (the seed's `coderlan`).
pub const DEFAULT_ALIAS: &str = "coderlan";

/// Longest accepted suffix in presentation form (leaves room for `<agent>.<workspace>.<owner>.`).
pub const MAX_SUFFIX_LEN: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("DNS suffix {suffix:?} is invalid: {reason}")]
    InvalidSuffix {
        suffix: String,
        reason: &'static str,
    },
}

/// The suffixes the zone serves: the deployment suffix `S` (whose names go into PeerUpdates)
/// and aliases answered with the same names. All lower case, without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    suffix: String,
    aliases: Vec<String>,
}

impl Default for ZoneConfig {
    /// `coder`, with the alias `coderlan`.
    fn default() -> Self {
        Self {
            suffix: DEFAULT_SUFFIX.to_owned(),
            aliases: vec![DEFAULT_ALIAS.to_owned()],
        }
    }
}

impl ZoneConfig {
    /// `hostname_suffix` from the deployment (`coder` when empty), with the alias `coderlan`.
    /// A trailing dot is accepted; upper case is folded.
    pub fn new(hostname_suffix: &str) -> Result<Self, ConfigError> {
        let suffix = match hostname_suffix.trim_end_matches('.') {
            "" => DEFAULT_SUFFIX.to_owned(),
            _ => normalize(hostname_suffix)?,
        };
        let aliases = match suffix == DEFAULT_ALIAS {
            true => Vec::new(),
            false => vec![DEFAULT_ALIAS.to_owned()],
        };
        Ok(Self { suffix, aliases })
    }

    /// Replaces the aliases. Duplicates, and an alias equal to the suffix, are dropped.
    pub fn with_aliases<I, S>(mut self, aliases: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<String> = Vec::new();
        for alias in aliases {
            let alias = normalize(alias.as_ref())?;
            if alias != self.suffix && !out.contains(&alias) {
                out.push(alias);
            }
        }
        self.aliases = out;
        Ok(self)
    }

    /// Serves the deployment suffix only.
    pub fn without_aliases(mut self) -> Self {
        self.aliases.clear();
        self
    }

    /// The deployment suffix `S`, e.g. `coder`.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// The aliases, e.g. `["coderlan"]`.
    pub fn aliases(&self) -> &[String] {
        &self.aliases
    }

    /// `S` first, then the aliases.
    pub fn served_suffixes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.suffix.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// Lower-cases, strips one trailing dot and checks every label: 1–63 bytes of `a-z`, `0-9`,
/// `-` or `_`.
fn normalize(suffix: &str) -> Result<String, ConfigError> {
    let invalid = |reason| ConfigError::InvalidSuffix {
        suffix: suffix.to_owned(),
        reason,
    };
    let text = suffix
        .strip_suffix('.')
        .unwrap_or(suffix)
        .to_ascii_lowercase();
    if text.is_empty() {
        return Err(invalid("it is empty"));
    }
    if text.len() > MAX_SUFFIX_LEN {
        return Err(invalid("it is longer than 100 characters"));
    }
    for label in text.split('.') {
        if label.is_empty() {
            return Err(invalid("it has an empty label"));
        }
        if label.len() > 63 {
            return Err(invalid("a label is longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid("only letters, digits, '-' and '_' are allowed"));
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_hostname_suffix_means_coder() {
        let config = ZoneConfig::new("").unwrap();
        assert_eq!(config.suffix(), "coder");
    }

    #[test]
    fn coderlan_is_served_as_alias_by_default() {
        let config = ZoneConfig::new("float").unwrap();
        assert_eq!(
            config.served_suffixes().collect::<Vec<_>>(),
            ["float", "coderlan"]
        );
        assert_eq!(
            ZoneConfig::default().served_suffixes().collect::<Vec<_>>(),
            ["coder", "coderlan"]
        );
    }

    #[test]
    fn alias_can_be_turned_off() {
        let config = ZoneConfig::new("coder").unwrap().without_aliases();
        assert_eq!(config.served_suffixes().collect::<Vec<_>>(), ["coder"]);
    }

    #[test]
    fn alias_equal_to_suffix_is_not_repeated() {
        let config = ZoneConfig::new("coderlan").unwrap();
        assert_eq!(config.served_suffixes().collect::<Vec<_>>(), ["coderlan"]);
        let config = ZoneConfig::new("coder")
            .unwrap()
            .with_aliases(["Coder", "lan", "LAN."])
            .unwrap();
        assert_eq!(
            config.served_suffixes().collect::<Vec<_>>(),
            ["coder", "lan"]
        );
    }

    #[test]
    fn suffix_is_lower_cased_and_loses_trailing_dot() {
        let config = ZoneConfig::new("Dev.Example.").unwrap();
        assert_eq!(config.suffix(), "dev.example");
    }

    #[test]
    fn invalid_suffixes_are_refused_with_the_reason() {
        for bad in ["a..b", ".a", "a b", "x".repeat(64).as_str(), "ü"] {
            let err = ZoneConfig::new(bad).unwrap_err();
            assert!(
                matches!(&err, ConfigError::InvalidSuffix { suffix, .. } if suffix == bad),
                "{bad}: {err}"
            );
        }
    }
}
