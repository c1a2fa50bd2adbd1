//! Who may use the SOCKS5 server (issue #17, finding 2): an open proxy into the tunnel on
//! `127.0.0.1` would let every local user reach the workspaces with the owner's identity.
//!
//! - **Local users**: by default only the owner — the user running codervpn, the user who
//!   ran it through `sudo` (`SUDO_UID`), and root — may connect. On Linux the connecting
//!   socket's owner is read from `/proc/net/tcp` / `tcp6` (the client's line: its local
//!   address is our peer address); elsewhere it cannot be told, and the server says so
//!   once and lets loopback clients in.
//! - **Credentials** (RFC 1929 username/password): when set, a client must offer method 2
//!   and present them; needed for a listener off loopback, where the peer is not a local
//!   user at all.

use std::fmt;
use std::net::SocketAddr;

/// A username and password a SOCKS5 client must present (RFC 1929: 1–255 bytes each).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: Vec<u8>,
    pass: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &String::from_utf8_lossy(&self.user))
            .field("pass", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// `user` and `pass`, each 1 to 255 bytes; else why not.
    pub fn new(user: impl Into<Vec<u8>>, pass: impl Into<Vec<u8>>) -> Result<Self, String> {
        let (user, pass) = (user.into(), pass.into());
        for (what, v) in [("username", &user), ("password", &pass)] {
            if v.is_empty() || v.len() > 255 {
                return Err(format!("the SOCKS5 {what} must be 1 to 255 bytes"));
            }
        }
        Ok(Self { user, pass })
    }

    /// `user:password` (the password may hold colons).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (user, pass) = text
            .trim_end_matches(['\r', '\n'])
            .split_once(':')
            .ok_or("SOCKS5 credentials must be USER:PASSWORD")?;
        Self::new(user, pass)
    }

    pub fn user(&self) -> &[u8] {
        &self.user
    }

    /// Whether `user` and `pass` are these, in time independent of where they differ.
    pub fn matches(&self, user: &[u8], pass: &[u8]) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        };
        // Both compared whatever the first gives, so the time tells nothing either.
        let u = eq(&self.user, user);
        let p = eq(&self.pass, pass);
        u & p
    }
}

/// Which local users may connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Users {
    /// These uids only.
    Only(Vec<u32>),
    /// Anyone who can reach the listener.
    Any,
}

/// The server's access policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub users: Users,
    pub credentials: Option<Credentials>,
}

impl Access {
    /// The default: the owner (our uid, `SUDO_UID` when we run as root, and root), no
    /// credentials.
    pub fn owner() -> Self {
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        let mut uids = vec![me, 0];
        if me == 0
            && let Some(sudo) = std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok())
        {
            uids.push(sudo);
        }
        uids.sort_unstable();
        uids.dedup();
        Self {
            users: Users::Only(uids),
            credentials: None,
        }
    }

    /// Anyone (with `credentials`, when set).
    pub fn any(credentials: Option<Credentials>) -> Self {
        Self {
            users: Users::Any,
            credentials,
        }
    }

    /// Whether a connection from `peer` to our `local` address may go on; `Err` says why
    /// not.
    pub fn admit(&self, local: SocketAddr, peer: SocketAddr) -> Result<(), String> {
        let Users::Only(uids) = &self.users else {
            return Ok(());
        };
        match peer_uid(local, peer) {
            Ok(Some(uid)) if uids.contains(&uid) => Ok(()),
            Ok(Some(uid)) => Err(format!(
                "local user {uid} may not use this SOCKS5 proxy (only uids {uids:?}; see --socks5-any-user)"
            )),
            Ok(None) => Err(format!(
                "{peer} is not a local socket; the proxy takes local users only"
            )),
            Err(e) => Err(format!("cannot tell which user {peer} is: {e}")),
        }
    }
}

/// The uid owning the local TCP socket `peer` connected to `local`: `Ok(None)` when no
/// local socket matches (the peer is on another host).
#[cfg(target_os = "linux")]
pub fn peer_uid(local: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<u32>> {
    let table = match peer {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    Ok(uid_in_table(&std::fs::read_to_string(table)?, peer, local))
}

/// Elsewhere the owner of a TCP peer cannot be read.
#[cfg(not(target_os = "linux"))]
pub fn peer_uid(_local: SocketAddr, _peer: SocketAddr) -> std::io::Result<Option<u32>> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the owner of a TCP peer is known on Linux only",
    ))
}

/// In a `/proc/net/tcp{,6}` table, the uid of the socket whose local address is `local`
/// and remote address `remote`.
pub fn uid_in_table(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid …
        let (l, r, uid) = (f.get(1)?, f.get(2)?, f.get(7)?);
        (proc_addr(l)? == local && proc_addr(r)? == remote).then(|| uid.parse().ok())?
    })
}

/// `0100007F:1F90` / 32 hex digits `:PORT`: each 32-bit word printed in the kernel's byte
/// order.
fn proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<[u8; 4]>> = (0..ip.len() / 8)
        .map(|i| {
            let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
            Some(w.to_ne_bytes())
        })
        .collect();
    let bytes: Vec<u8> = words?.concat();
    match bytes.len() {
        4 => {
            let b: [u8; 4] = bytes.try_into().ok()?;
            Some(SocketAddr::from((b, port)))
        }
        16 => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            let ip = std::net::Ipv6Addr::from(b);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, port)),
                None => SocketAddr::from((ip, port)),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn credentials_compare_whole_and_never_print_the_password() {
        let c = Credentials::parse("codervpn:s3cr:et\n").unwrap();
        assert!(c.matches(b"codervpn", b"s3cr:et"));
        assert!(!c.matches(b"codervpn", b"s3cr:eX"));
        assert!(!c.matches(b"codervpn", b"s3cr:e"));
        assert!(!c.matches(b"codervpX", b"s3cr:et"));
        assert!(!format!("{c:?}").contains("s3cr"));
        assert!(Credentials::parse("nopass").is_err());
        assert!(Credentials::parse(":x").is_err());
        assert!(Credentials::new("u", vec![b'p'; 256]).is_err());
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_table_names_the_owner_of_the_client_socket() {
        // 127.0.0.1:1080 listening; a client 127.0.0.1:40000 (uid 65534) connected to it.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0438 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:9C40 0100007F:0438 01 00000000:00000000 00:00000000 00000000 65534        0 2 1 0 20 4 30 10 -1\n\
   2: 0100007F:0438 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n";
        let server: SocketAddr = "127.0.0.1:1080".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(uid_in_table(table, client, server), Some(65534));
        assert_eq!(uid_in_table(table, server, client), Some(0));
        assert_eq!(
            uid_in_table(table, "127.0.0.1:40001".parse().unwrap(), server),
            None
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv6_words_are_in_host_order_and_mapped_addresses_fold_to_ipv4() {
        assert_eq!(
            proc_addr("00000000000000000000000001000000:0438"),
            Some("[::1]:1080".parse().unwrap())
        );
        assert_eq!(
            proc_addr("0000000000000000FFFF00000100007F:0438"),
            Some("127.0.0.1:1080".parse().unwrap())
        );
        assert_eq!(proc_addr("zz:0438"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_real_loopback_connection_is_ours() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        assert_eq!(
            peer_uid(listener.local_addr().unwrap(), peer).unwrap(),
            Some(me)
        );
        assert!(
            Access::owner()
                .admit(listener.local_addr().unwrap(), peer)
                .is_ok()
        );
        let strangers = Access {
            users: Users::Only(vec![me + 1]),
            credentials: None,
        };
        assert!(
            strangers
                .admit(listener.local_addr().unwrap(), peer)
                .unwrap_err()
                .contains(&format!("local user {me} may not use"))
        );
    }
}
