//! The command-line side of who may use a SOCKS5 proxy into the tunnel (issue #17): by
//! default only the owner (see `codervpn_engine::host::socks5_access`); `--socks5-any-user`
//! opens it to every local user; `--socks5-credentials FILE` demands a username and
//! password (RFC 1929), and is required for a listener off loopback.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, bail};
use codervpn_engine::host::socks5_access::{Access, Credentials};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct Socks5Access {
    /// Let every local user use the SOCKS5 proxy. By default only you (the user who
    /// started codervpn, or ran it with sudo) and root may: others are refused.
    #[arg(long)]
    pub socks5_any_user: bool,
    /// Require SOCKS5 clients to log in (RFC 1929) with the USER:PASSWORD in FILE (mode
    /// 0600 or stricter; e.g. `curl --proxy socks5h://USER:PASSWORD@127.0.0.1:1080`).
    /// Needed for a SOCKS5 address off loopback.
    #[arg(long, value_name = "FILE")]
    pub socks5_credentials: Option<PathBuf>,
}

impl Socks5Access {
    /// The access policy for a proxy on `addr`.
    pub fn access(&self, addr: SocketAddr) -> anyhow::Result<Access> {
        let credentials = match &self.socks5_credentials {
            Some(path) => Some(read_credentials(path)?),
            None => None,
        };
        if !addr.ip().is_loopback() {
            if credentials.is_none() {
                bail!(
                    "--socks5 {addr} is off loopback: anyone who reaches it would use your \
                     workspaces; give --socks5-credentials FILE (USER:PASSWORD)"
                );
            }
            // Remote peers are no local users: the credentials are the check.
            return Ok(Access::any(credentials));
        }
        Ok(match (self.socks5_any_user, credentials) {
            (true, credentials) => Access::any(credentials),
            (false, credentials) => Access {
                credentials,
                ..Access::owner()
            },
        })
    }
}

fn read_credentials(path: &PathBuf) -> anyhow::Result<Credentials> {
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("--socks5-credentials {shown}"))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "--socks5-credentials {shown}: mode {:o} lets other users read the password; chmod 600 it",
            meta.mode() & 0o777
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--socks5-credentials {shown}"))?;
    Credentials::parse(&text).map_err(|e| anyhow::anyhow!("--socks5-credentials {shown}: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use codervpn_engine::host::socks5_access::Users;
    use std::os::unix::fs::PermissionsExt;

    fn file(mode: u32, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn loopback_defaults_to_the_owner_without_credentials() {
        let a = Socks5Access::default()
            .access("127.0.0.1:1080".parse().unwrap())
            .unwrap();
        assert!(matches!(a.users, Users::Only(_)));
        assert!(a.credentials.is_none());
        let a = Socks5Access {
            socks5_any_user: true,
            ..Default::default()
        }
        .access("[::1]:1080".parse().unwrap())
        .unwrap();
        assert_eq!(a.users, Users::Any);
    }

    #[test]
    fn off_loopback_needs_credentials() {
        let err = Socks5Access::default()
            .access("0.0.0.0:1080".parse().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("off loopback"), "{err}");
        let (_d, path) = file(0o600, "me:pw\n");
        let a = Socks5Access {
            socks5_credentials: Some(path),
            ..Default::default()
        }
        .access("10.0.0.5:1080".parse().unwrap())
        .unwrap();
        assert_eq!(a.users, Users::Any);
        assert_eq!(a.credentials.unwrap().user(), b"me");
    }

    #[test]
    fn a_credentials_file_others_can_read_is_refused() {
        let (_d, path) = file(0o644, "me:pw\n");
        let err = Socks5Access {
            socks5_credentials: Some(path),
            ..Default::default()
        }
        .access("127.0.0.1:1080".parse().unwrap())
        .unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
