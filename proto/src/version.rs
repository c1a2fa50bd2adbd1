//! Protocol versions and version lists (codervpn-protocol.md §2.4).

use std::fmt;

/// One protocol version, `major.minor`, with `major >= 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
}

/// The versions our tunnel and our managers advertise: 1.3 adds Wake.
pub const CURRENT_VERSIONS: &[Version] = &[Version::new(1, 3)];

/// Why a version or a version list did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("invalid version {0:?}: want major.minor with major >= 1")]
    Invalid(String),
    #[error("no versions")]
    NoVersions,
    #[error("invalid version list {list:?}: {source}")]
    InvalidList {
        list: String,
        #[source]
        source: Box<VersionError>,
    },
    #[error("versions are not sorted: {0:?}")]
    NotSorted(String),
    #[error("duplicate major version: {0:?}")]
    DuplicateMajor(String),
}

impl Version {
    pub const fn new(major: u64, minor: u64) -> Self {
        Self { major, minor }
    }

    /// Parses `major.minor`: exactly two base-10 unsigned parts, major not 0.
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        let invalid = || VersionError::Invalid(s.to_owned());
        let (major, minor) = s.split_once('.').ok_or_else(invalid)?;
        let major = parse_u64(major).ok_or_else(invalid)?;
        let minor = parse_u64(minor).ok_or_else(invalid)?;
        if major == 0 {
            return Err(invalid());
        }
        Ok(Self { major, minor })
    }
}

/// Base-10 digits only: `u64::from_str` would also take a leading `+`.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A non-empty list of versions, ascending by major, at most one per major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionList(Vec<Version>);

impl VersionList {
    pub fn new(versions: Vec<Version>) -> Result<Self, VersionError> {
        let list = Self(versions);
        list.check()?;
        Ok(list)
    }

    /// The list our side advertises.
    pub fn current() -> Self {
        Self(CURRENT_VERSIONS.to_vec())
    }

    /// Parses `1.1` or `1.3,2.1` (comma separated, no spaces).
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        if s.is_empty() {
            return Err(VersionError::NoVersions);
        }
        let versions = s
            .split(',')
            .map(Version::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VersionError::InvalidList {
                list: s.to_owned(),
                source: Box::new(e),
            })?;
        Self::new(versions)
    }

    fn check(&self) -> Result<(), VersionError> {
        if self.0.is_empty() {
            return Err(VersionError::NoVersions);
        }
        for pair in self.0.windows(2) {
            let [a, b] = pair else { continue };
            if b.major < a.major {
                return Err(VersionError::NotSorted(self.to_string()));
            }
            if b.major == a.major {
                return Err(VersionError::DuplicateMajor(self.to_string()));
            }
        }
        Ok(())
    }

    pub fn versions(&self) -> &[Version] {
        &self.0
    }

    /// The highest major present in both lists, with the smaller of the two minors.
    pub fn negotiate(&self, peer: &VersionList) -> Option<Version> {
        self.0.iter().rev().find_map(|ours| {
            peer.0
                .iter()
                .find(|theirs| theirs.major == ours.major)
                .map(|theirs| Version::new(ours.major, ours.minor.min(theirs.minor)))
        })
    }
}

impl fmt::Display for VersionList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // coder/coder vpn/version_test.go (checklist #13, #14)
    #[test]
    fn parses_valid_versions_and_rejects_malformed_ones() {
        assert_eq!(Version::parse("1.0"), Ok(Version::new(1, 0)));
        assert_eq!(Version::parse("12.34"), Ok(Version::new(12, 34)));
        for bad in [
            "", "1", "1.0.0", "0.1", "a.1", "1.a", "+1.0", "1.-0", " 1.0",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    // checklist #15, #18 and the spec's negotiation table
    #[test]
    fn negotiation_takes_highest_common_major_and_lower_minor() {
        let cases = [
            ("1.2", "1.3", Some("1.2")),
            ("1.1", "1.3,2.1", Some("1.1")),
            ("1.3,2.1", "1.7", Some("1.3")),
            ("1.0", "2.0", None),
            ("1.1", "2.0,3.0", None),
            ("1.3,2.1", "1.0,2.4", Some("2.1")),
        ];
        for (ours, peer, want) in cases {
            let got = VersionList::parse(ours)
                .unwrap()
                .negotiate(&VersionList::parse(peer).unwrap());
            assert_eq!(
                got.map(|v| v.to_string()).as_deref(),
                want,
                "{ours} vs {peer}"
            );
        }
    }

    // checklist #16
    #[test]
    fn list_round_trips_through_text() {
        assert_eq!(
            VersionList::parse("1.1,2.3,3.2").unwrap().to_string(),
            "1.1,2.3,3.2"
        );
    }

    // checklist #17
    #[test]
    fn list_rules_name_the_broken_rule() {
        let err = |s: &str| VersionList::parse(s).unwrap_err().to_string();
        assert!(err("1.0,1.0").contains("duplicate major version"));
        assert!(err("1.0,1.2").contains("duplicate major version"));
        assert!(err("2.0,1.0").contains("versions are not sorted"));
        assert!(err("").contains("no versions"));
        assert!(err("1.0,x").contains("invalid version list"));
    }
}
