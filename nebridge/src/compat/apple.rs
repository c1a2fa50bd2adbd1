//! macOS's second check of a downloaded tunnel, after the minisign signature: the staged
//! copy's Apple code signature must satisfy Coder Desktop's rule (`codervpn-codesign`:
//! valid and `anchor apple generic`, Coder's identifier and team, and for the library its
//! Info.plist naming the server's exact version), checked on the very file that is then
//! loaded or run. Elsewhere there is no OS code signature to check and this passes.
//!
//! **Compiled for macOS (`.ci/apple-check`), never run on a Mac.** With
//! `--insecure-skip-verify` neither check runs.

use std::path::Path;

use codervpn_codesign::{Artifact, CodesignError};

use super::ArtifactKind;
use super::verify::SemVer;

/// The rule for a `kind` artifact of a server at `version`.
pub(crate) fn rule(kind: ArtifactKind, version: &SemVer) -> Artifact {
    match kind {
        ArtifactKind::Library => Artifact::Dylib {
            server_version: version.to_string(),
        },
        ArtifactKind::Daemon => Artifact::Cli,
    }
}

/// Checks the staged file at `path` against `rule` (macOS; `None`: not checked).
pub(crate) fn check_staged(path: &Path, rule: Option<&Artifact>) -> Result<(), CodesignError> {
    #[cfg(target_os = "macos")]
    if let Some(rule) = rule {
        return codervpn_codesign::check(rule, &codervpn_codesign::macos::signing_info(path));
    }
    let _ = (path, rule);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_must_carry_the_servers_version_and_the_cli_must_not() {
        let v = SemVer {
            major: 2,
            minor: 36,
            patch: 1,
        };
        assert_eq!(
            rule(ArtifactKind::Library, &v),
            Artifact::Dylib {
                server_version: "2.36.1".into()
            }
        );
        assert_eq!(rule(ArtifactKind::Daemon, &v), Artifact::Cli);
    }
}
