//! The Apple code-signing rule Coder Desktop applies to a downloaded tunnel
//! (dylib-abi-and-compat.md §6.1 for the library, §6.3 for the CLI), as data in and a verdict
//! out: which fields, which values, in which order, with which message — a plain
//! [`SigningInfo`], so the rule is tested on Linux against fake signing information. On
//! macOS, `macos::signing_info` reads those facts from a file with `SecStaticCode`
//! (Security.framework, through `security-framework`): type-checked by `.ci/apple-check`,
//! never run here (no Mac).
//!
//! One deliberate difference from the dylib-era app: the signature must satisfy
//! `anchor apple generic` (upstream added the requirement only in the daemon era).

#[cfg(target_os = "macos")]
pub mod macos;

/// Coder's Apple developer team.
pub const CODER_TEAM: &str = "4399GN35BJ";
/// The signing identifier (and bundle identifier) of Coder's VPN library.
pub const DYLIB_IDENTIFIER: &str = "com.coder.Coder-Desktop.VPN.dylib";
/// The library's `CFBundleName`.
pub const DYLIB_BUNDLE_NAME: &str = "CoderVPN";
/// The signing identifier of the `coder` CLI.
pub const CLI_IDENTIFIER: &str = "com.coder.cli";

/// What was downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    /// The dylib of the library era; its Info.plist must name the server's version,
    /// `major.minor.patch` exactly.
    Dylib { server_version: String },
    /// The CLI of the daemon era (no Info.plist; its version is checked by running it).
    Cli,
}

/// What the system says about a file's signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigningInfo {
    /// The signature is valid and satisfies `anchor apple generic`; `Err` says why not.
    pub valid: Option<Result<(), String>>,
    pub identifier: Option<String>,
    pub team: Option<String>,
    /// The embedded Info.plist, when there is one.
    pub info_plist: Option<InfoPlist>,
}

/// The Info.plist fields the rule reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InfoPlist {
    pub bundle_identifier: Option<String>,
    pub bundle_name: Option<String>,
    pub short_version: Option<String>,
}

/// Why a file was refused (the first failing check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodesignError {
    #[error("code signature unreadable")]
    Unreadable,
    #[error("invalid code signature (or not `anchor apple generic`): {0}")]
    Invalid(String),
    #[error("signed as {found:?}, expected {expected:?}")]
    Identifier {
        found: Option<String>,
        expected: &'static str,
    },
    #[error("signed by team {found:?}, expected Coder's {CODER_TEAM}")]
    Team { found: Option<String> },
    #[error("no Info.plist in the signing information")]
    NoInfoPlist,
    #[error("Info.plist CFBundleIdentifier {found:?}, expected {DYLIB_IDENTIFIER:?}")]
    BundleIdentifier { found: Option<String> },
    #[error("Info.plist CFBundleName {found:?}, expected {DYLIB_BUNDLE_NAME:?}")]
    BundleName { found: Option<String> },
    #[error("Info.plist CFBundleShortVersionString {found:?}, but the server runs {server}")]
    Version {
        found: Option<String>,
        server: String,
    },
}

/// Applies the rule to `info` for `artifact`; the first failing check decides.
pub fn check(artifact: &Artifact, info: &SigningInfo) -> Result<(), CodesignError> {
    match &info.valid {
        None => return Err(CodesignError::Unreadable),
        Some(Err(why)) => return Err(CodesignError::Invalid(why.clone())),
        Some(Ok(())) => {}
    }
    let expected = match artifact {
        Artifact::Dylib { .. } => DYLIB_IDENTIFIER,
        Artifact::Cli => CLI_IDENTIFIER,
    };
    if info.identifier.as_deref() != Some(expected) {
        return Err(CodesignError::Identifier {
            found: info.identifier.clone(),
            expected,
        });
    }
    if info.team.as_deref() != Some(CODER_TEAM) {
        return Err(CodesignError::Team {
            found: info.team.clone(),
        });
    }
    let Artifact::Dylib { server_version } = artifact else {
        return Ok(());
    };
    let Some(plist) = &info.info_plist else {
        return Err(CodesignError::NoInfoPlist);
    };
    if plist.bundle_identifier.as_deref() != Some(DYLIB_IDENTIFIER) {
        return Err(CodesignError::BundleIdentifier {
            found: plist.bundle_identifier.clone(),
        });
    }
    if plist.bundle_name.as_deref() != Some(DYLIB_BUNDLE_NAME) {
        return Err(CodesignError::BundleName {
            found: plist.bundle_name.clone(),
        });
    }
    if plist.short_version.as_deref() != Some(server_version.as_str()) {
        return Err(CodesignError::Version {
            found: plist.short_version.clone(),
            server: server_version.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_dylib() -> SigningInfo {
        SigningInfo {
            valid: Some(Ok(())),
            identifier: Some(DYLIB_IDENTIFIER.into()),
            team: Some(CODER_TEAM.into()),
            info_plist: Some(InfoPlist {
                bundle_identifier: Some(DYLIB_IDENTIFIER.into()),
                bundle_name: Some(DYLIB_BUNDLE_NAME.into()),
                short_version: Some("2.24.3".into()),
            }),
        }
    }

    fn dylib() -> Artifact {
        Artifact::Dylib {
            server_version: "2.24.3".into(),
        }
    }

    #[test]
    fn coders_signed_dylib_and_cli_pass() {
        assert_eq!(check(&dylib(), &good_dylib()), Ok(()));
        let cli = SigningInfo {
            identifier: Some(CLI_IDENTIFIER.into()),
            info_plist: None,
            ..good_dylib()
        };
        assert_eq!(check(&Artifact::Cli, &cli), Ok(()));
    }

    #[test]
    fn each_check_fails_in_the_documented_order() {
        let mut info = good_dylib();
        // Break everything from the last check back to the first: each time, the first
        // broken one is what is reported.
        info.info_plist.as_mut().unwrap().short_version = Some("2.24.2".into());
        assert!(matches!(
            check(&dylib(), &info),
            Err(CodesignError::Version { .. })
        ));
        info.info_plist.as_mut().unwrap().bundle_name = Some("Other".into());
        assert!(matches!(
            check(&dylib(), &info),
            Err(CodesignError::BundleName { .. })
        ));
        info.info_plist.as_mut().unwrap().bundle_identifier = None;
        assert!(matches!(
            check(&dylib(), &info),
            Err(CodesignError::BundleIdentifier { .. })
        ));
        info.info_plist = None;
        assert_eq!(check(&dylib(), &info), Err(CodesignError::NoInfoPlist));
        info.team = Some("ABCDE12345".into());
        assert!(matches!(
            check(&dylib(), &info),
            Err(CodesignError::Team { .. })
        ));
        info.identifier = Some(CLI_IDENTIFIER.into());
        let err = check(&dylib(), &info).unwrap_err();
        assert!(err.to_string().contains(DYLIB_IDENTIFIER), "{err}");
        info.valid = Some(Err("not anchor apple generic".into()));
        assert!(matches!(
            check(&dylib(), &info),
            Err(CodesignError::Invalid(_))
        ));
        info.valid = None;
        assert_eq!(check(&dylib(), &info), Err(CodesignError::Unreadable));
    }

    #[test]
    fn the_cli_needs_its_own_identifier_and_no_info_plist() {
        let info = SigningInfo {
            info_plist: None,
            ..good_dylib()
        };
        assert!(matches!(
            check(&Artifact::Cli, &info),
            Err(CodesignError::Identifier {
                expected: CLI_IDENTIFIER,
                ..
            })
        ));
    }

    #[test]
    fn the_version_must_match_exactly() {
        let mut info = good_dylib();
        info.info_plist.as_mut().unwrap().short_version = Some("2.24.3-rc.1".into());
        let err = check(&dylib(), &info).unwrap_err();
        assert!(err.to_string().contains("the server runs 2.24.3"), "{err}");
    }
}
