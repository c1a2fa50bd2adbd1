//! A SOCKS5 server (RFC 1928): the "no authentication" method — or, with credentials,
//! username/password (RFC 1929) — and the CONNECT command, to IPv4, IPv6 and domain-name
//! targets; who may connect at all is [`Access`]. Names are not looked up — no DNS goes through the
//! tunnel yet — so a domain-name target works only when it is an IP literal; any other name
//! is answered "host unreachable" and logged.
//!
//! The codec ([`parse_greeting`], [`parse_request`], [`encode_reply`]) is sans-IO: bytes in,
//! `Ok(None)` until a message is complete. [`serve`] and [`handle_client`] are the shell.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::socks5_access::{Access, Credentials};
use super::{ConnectError, TcpConnector, accept_next};

pub const VERSION: u8 = 5;
/// Method: no authentication required.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method: username/password (RFC 1929).
pub const METHOD_USER_PASS: u8 = 0x02;
/// The version byte of the username/password sub-negotiation.
pub const USER_PASS_VERSION: u8 = 0x01;
/// Method reply: none of the offered methods is acceptable.
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
/// The whole handshake (greeting and request) must arrive within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest greeting (2 + 255 methods) and request (4 + 1 + 255 + 2) fit this buffer.
const HANDSHAKE_BUF: usize = 520;

/// The REP field of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// The CMD field of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
    Other(u8),
}

/// Where the client wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    /// ATYP 3: up to 255 bytes, not necessarily UTF-8.
    Domain {
        name: Vec<u8>,
        port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub target: Target,
}

/// Why a SOCKS5 client was turned away; its connection is closed after the reply, if any.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    #[error("not a SOCKS5 client: version byte {0:#04x} (expected 0x05)")]
    Version(u8),
    #[error("the greeting offers no authentication method")]
    NoMethods,
    #[error("none of the offered methods {0:02x?} is the one this proxy takes ({1})")]
    NoAcceptableMethod(Vec<u8>, &'static str),
    #[error("username/password sub-negotiation version {0:#04x} (expected 0x01)")]
    AuthVersion(u8),
    #[error("empty username or password")]
    EmptyCredentials,
    #[error("wrong username or password")]
    BadCredentials,
    #[error("address type {0:#04x} is not IPv4 (1), domain name (3) or IPv6 (4)")]
    AddressType(u8),
    #[error("empty domain name")]
    EmptyDomain,
    #[error("the client closed the connection in the middle of the {0}")]
    Truncated(&'static str),
    #[error("the client did not finish the handshake within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("command {0:?} is not supported (only CONNECT)")]
    Command(Command),
    #[error(
        "target {0} is a host name; codervpn's SOCKS5 server resolves no names, only IP literals"
    )]
    HostName(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("talking to the client: {0}")]
    Io(#[from] io::Error),
}

/// Parses the method-selection greeting. `Ok(Some((no_auth_offered, consumed)))` once whole.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, Socks5Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    let Some(&count) = buf.get(1) else {
        return Ok(None);
    };
    if count == 0 {
        return Err(Socks5Error::NoMethods);
    }
    let end = 2 + usize::from(count);
    let Some(methods) = buf.get(2..end) else {
        return Ok(None);
    };
    Ok(Some((methods.to_vec(), end)))
}

/// Parses a username/password message (RFC 1929). `Ok(Some((user, pass, consumed)))`
/// once whole.
#[allow(clippy::type_complexity)]
pub fn parse_user_pass(buf: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>, usize)>, Socks5Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != USER_PASS_VERSION {
        return Err(Socks5Error::AuthVersion(version));
    }
    let Some(&ulen) = buf.get(1) else {
        return Ok(None);
    };
    let ulen = usize::from(ulen);
    let Some(&plen) = buf.get(2 + ulen) else {
        return Ok(None);
    };
    let plen = usize::from(plen);
    let end = 3 + ulen + plen;
    if buf.len() < end {
        return Ok(None);
    }
    if ulen == 0 || plen == 0 {
        return Err(Socks5Error::EmptyCredentials);
    }
    Ok(Some((
        buf[2..2 + ulen].to_vec(),
        buf[3 + ulen..end].to_vec(),
        end,
    )))
}

/// Parses a request. `Ok(Some((request, consumed)))` once whole; bytes after `consumed`
/// are the client's first payload bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, Socks5Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    let (Some(&cmd), Some(_reserved), Some(&atyp)) = (buf.get(1), buf.get(2), buf.get(3)) else {
        return Ok(None);
    };
    let command = match cmd {
        1 => Command::Connect,
        2 => Command::Bind,
        3 => Command::UdpAssociate,
        other => Command::Other(other),
    };
    let rest = &buf[4..];
    let (target, len) = match atyp {
        1 => {
            let Some(b) = rest.get(..6) else {
                return Ok(None);
            };
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            (
                Target::Addr(SocketAddr::new(ip.into(), u16::from_be_bytes([b[4], b[5]]))),
                6,
            )
        }
        4 => {
            let Some(b) = rest.get(..18) else {
                return Ok(None);
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let ip = Ipv6Addr::from(octets);
            (
                Target::Addr(SocketAddr::new(
                    ip.into(),
                    u16::from_be_bytes([b[16], b[17]]),
                )),
                18,
            )
        }
        3 => {
            let Some(&n) = rest.first() else {
                return Ok(None);
            };
            if n == 0 {
                return Err(Socks5Error::EmptyDomain);
            }
            let n = usize::from(n);
            let Some(b) = rest.get(1..1 + n + 2) else {
                return Ok(None);
            };
            let name = b[..n].to_vec();
            let port = u16::from_be_bytes([b[n], b[n + 1]]);
            (Target::Domain { name, port }, 1 + n + 2)
        }
        other => return Err(Socks5Error::AddressType(other)),
    };
    Ok(Some((Request { command, target }, 4 + len)))
}

/// A reply to a request: VER, REP, RSV, then `bound` as ATYP, address, port.
pub fn encode_reply(reply: Reply, bound: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[VERSION, reply as u8, 0]);
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// The reply that tells a client why its connection failed.
pub fn reply_for(e: &ConnectError) -> Reply {
    match e {
        ConnectError::Refused { .. } => Reply::ConnectionRefused,
        ConnectError::TimedOut { .. } => Reply::HostUnreachable,
        ConnectError::Unreachable { .. } => Reply::NetworkUnreachable,
        ConnectError::TooManyConnections { .. } | ConnectError::StackStopped => {
            Reply::GeneralFailure
        }
    }
}

/// The address a domain-name target stands for, if it is an IP literal (`10.0.0.1`,
/// `fd00::1`, `[fd00::1]`).
pub fn literal_target(name: &[u8], port: u16) -> Option<SocketAddr> {
    let name = std::str::from_utf8(name).ok()?;
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    Some(SocketAddr::new(name.parse().ok()?, port))
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Domain { name, port } => {
                write!(f, "{}:{port}", String::from_utf8_lossy(name).escape_debug())
            }
        }
    }
}

/// Accepts SOCKS5 clients on `listener` until the task is dropped; `access` says who may
/// use it.
pub async fn serve<C: TcpConnector>(listener: TcpListener, connector: C, access: Access) {
    let local = listener.local_addr().ok();
    let access = std::sync::Arc::new(access);
    let mut warned = false;
    loop {
        let (client, from) = accept_next(&listener, "SOCKS5").await;
        if let Some(local) = local {
            match access.admit(local, from) {
                Ok(()) => {}
                Err(why) if cfg!(not(target_os = "linux")) && local.ip().is_loopback() => {
                    if !std::mem::replace(&mut warned, true) {
                        warn!("SOCKS5: {why}; every local user may use the proxy here");
                    }
                }
                Err(why) => {
                    warn!(%from, "SOCKS5 connection refused: {why}");
                    continue;
                }
            }
        }
        let connector = connector.clone();
        let access = access.clone();
        tokio::spawn(async move {
            match handle_client(client, &connector, access.credentials.as_ref()).await {
                Ok((target, up, down)) => {
                    debug!(%from, %target, up, down, "SOCKS5 connection done")
                }
                Err(Socks5Error::HostName(name)) => {
                    warn!(%from, "SOCKS5 client asked for host name {name}: codervpn resolves only IP literals and workspace names (use an address, or socks5:// instead of socks5h://)")
                }
                Err(Socks5Error::Connect(e)) => info!(%from, "SOCKS5: {e}"),
                Err(e @ Socks5Error::BadCredentials) => {
                    warn!(%from, "SOCKS5 client turned away: {e}")
                }
                Err(e) => debug!(%from, error = %e, "SOCKS5 client turned away"),
            }
        });
    }
}

/// Serves one client: handshake, connect through `connector`, then copies bytes both ways
/// (each half closed on its own) until both sides are done. Returns the target and the
/// bytes sent up (client → target) and down.
pub async fn handle_client<S, C>(
    mut client: S,
    connector: &C,
    credentials: Option<&Credentials>,
) -> Result<(SocketAddr, u64, u64), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: TcpConnector,
{
    let mut buf = [0u8; HANDSHAKE_BUF];
    let (request, early) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&mut client, &mut buf, credentials),
    )
    .await
    .map_err(|_| Socks5Error::HandshakeTimeout)??;
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let to = match &request.target {
        Target::Addr(a) => *a,
        Target::Domain { name, port } => match literal_target(name, *port).or_else(|| {
            let name = std::str::from_utf8(name).ok()?;
            connector.resolve(name).map(|ip| SocketAddr::new(ip, *port))
        }) {
            Some(a) => a,
            None => {
                client
                    .write_all(&encode_reply(Reply::HostUnreachable, unspecified))
                    .await?;
                return Err(Socks5Error::HostName(request.target.to_string()));
            }
        },
    };
    match request.command {
        Command::Connect => {}
        Command::Bind | Command::UdpAssociate | Command::Other(_) => {
            client
                .write_all(&encode_reply(Reply::CommandNotSupported, unspecified))
                .await?;
            return Err(Socks5Error::Command(request.command));
        }
    }
    let mut remote = match connector.connect(to).await {
        Ok(s) => s,
        Err(e) => {
            client
                .write_all(&encode_reply(reply_for(&e), unspecified))
                .await?;
            return Err(e.into());
        }
    };
    // The address we connect from inside the tunnel is the stack's business; RFC 1928
    // lets a server answer with an unspecified one.
    client
        .write_all(&encode_reply(Reply::Succeeded, unspecified))
        .await?;
    let early = &buf[early.0..early.1];
    if !early.is_empty() {
        remote.write_all(early).await?;
    }
    let (up, down) = tokio::io::copy_bidirectional(&mut client, &mut remote).await?;
    Ok((to, up + early.len() as u64, down))
}

/// Reads greeting and request. Returns the request and the range of `buf` holding payload
/// bytes the client sent right after it.
async fn handshake<S>(
    client: &mut S,
    buf: &mut [u8; HANDSHAKE_BUF],
    credentials: Option<&Credentials>,
) -> Result<(Request, (usize, usize)), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut filled = 0;
    let (methods, used) = loop {
        if let Some(g) = parse_greeting(&buf[..filled])? {
            break g;
        }
        filled += read_more(client, buf, filled, "greeting").await?;
    };
    let (method, name) = match credentials {
        Some(_) => (METHOD_USER_PASS, "username/password"),
        None => (METHOD_NO_AUTH, "no authentication"),
    };
    if !methods.contains(&method) {
        client.write_all(&[VERSION, METHOD_NONE_ACCEPTABLE]).await?;
        return Err(Socks5Error::NoAcceptableMethod(methods, name));
    }
    client.write_all(&[VERSION, method]).await?;
    buf.copy_within(used..filled, 0);
    filled -= used;
    if let Some(want) = credentials {
        let (user, pass, used) = loop {
            if let Some(m) = parse_user_pass(&buf[..filled])? {
                break m;
            }
            filled += read_more(client, buf, filled, "username/password").await?;
        };
        if !want.matches(&user, &pass) {
            client.write_all(&[USER_PASS_VERSION, 1]).await?;
            return Err(Socks5Error::BadCredentials);
        }
        client.write_all(&[USER_PASS_VERSION, 0]).await?;
        buf.copy_within(used..filled, 0);
        filled -= used;
    }
    loop {
        match parse_request(&buf[..filled]) {
            Ok(Some((request, used))) => return Ok((request, (used, filled))),
            Ok(None) => filled += read_more(client, buf, filled, "request").await?,
            Err(e) => {
                let reply = if matches!(e, Socks5Error::AddressType(_)) {
                    Reply::AddressTypeNotSupported
                } else {
                    Reply::GeneralFailure // a wrong version byte, an empty name
                };
                client
                    .write_all(&encode_reply(
                        reply,
                        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                    ))
                    .await?;
                return Err(e);
            }
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut [u8],
    filled: usize,
    stage: &'static str,
) -> Result<usize, Socks5Error> {
    // Both messages are shorter than the buffer, so a parse that wants more always has room.
    let n = client.read(&mut buf[filled..]).await?;
    if n == 0 {
        return Err(Socks5Error::Truncated(stage));
    }
    Ok(n)
}

#[cfg(test)]
#[path = "socks5_tests.rs"]
mod tests;
