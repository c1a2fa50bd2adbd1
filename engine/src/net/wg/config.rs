//! wg-quick style configuration files (`[Interface]` and `[Peer]` sections).

use std::net::{SocketAddr, ToSocketAddrs};

use base64::Engine;
use ipnet::IpNet;

use super::PeerConfig;

/// A parsed configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgConfig {
    pub private_key: [u8; 32],
    pub addresses: Vec<IpNet>,
    pub listen_port: Option<u16>,
    pub mtu: Option<u32>,
    pub peers: Vec<PeerConfig>,
    /// wg-quick keys we read but do not act on (`DNS`, `PostUp`, …), with their line.
    pub ignored: Vec<(usize, String)>,
}

/// A configuration error, with the file and line it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// wg-quick keys that only wg-quick itself acts on.
const WG_QUICK_ONLY: &[&str] = &[
    "dns",
    "table",
    "preup",
    "postup",
    "predown",
    "postdown",
    "saveconfig",
    "fwmark",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    None,
    Interface,
    Peer,
}

impl WgConfig {
    /// Parses `text`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let mut private_key = None;
        let mut cfg = WgConfig {
            private_key: [0; 32],
            addresses: Vec::new(),
            listen_port: None,
            mtu: None,
            peers: Vec::new(),
            ignored: Vec::new(),
        };
        let mut section = Section::None;
        let mut peer_lines: Vec<usize> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let err = |message: String| ConfigError {
                file: file.to_owned(),
                line: line_no,
                message,
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                section = match line.to_ascii_lowercase().as_str() {
                    "[interface]" => Section::Interface,
                    "[peer]" => {
                        cfg.peers.push(PeerConfig {
                            public_key: [0; 32],
                            preshared_key: None,
                            allowed_ips: Vec::new(),
                            endpoint: None,
                            persistent_keepalive: None,
                        });
                        peer_lines.push(line_no);
                        Section::Peer
                    }
                    _ => {
                        return Err(err(format!(
                            "unknown section {line}; want [Interface] or [Peer]"
                        )));
                    }
                };
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(format!("expected `Key = Value`, got {line:?}")));
            };
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            match (section, key.as_str()) {
                (Section::None, _) => return Err(err("key outside any section".into())),
                (Section::Interface, "privatekey") => {
                    private_key = Some(parse_key(value).map_err(err)?)
                }
                (Section::Interface, "address") => {
                    for a in list(value) {
                        cfg.addresses.push(parse_net(a, false).map_err(err)?);
                    }
                }
                (Section::Interface, "listenport") => {
                    cfg.listen_port = Some(
                        value
                            .parse()
                            .map_err(|_| err(format!("bad ListenPort {value:?}")))?,
                    );
                }
                (Section::Interface, "mtu") => {
                    let mtu: u32 = value
                        .parse()
                        .map_err(|_| err(format!("bad MTU {value:?}")))?;
                    if !(576..=65535).contains(&mtu) {
                        return Err(err(format!("MTU {mtu} out of range 576..=65535")));
                    }
                    cfg.mtu = Some(mtu);
                }
                (Section::Interface, k) if WG_QUICK_ONLY.contains(&k) => {
                    cfg.ignored.push((line_no, key.clone()))
                }
                (Section::Peer, k) => {
                    let Some(peer) = cfg.peers.last_mut() else {
                        return Err(err("key outside any section".into()));
                    };
                    match k {
                        "publickey" => peer.public_key = parse_key(value).map_err(err)?,
                        "presharedkey" => peer.preshared_key = Some(parse_key(value).map_err(err)?),
                        "allowedips" => {
                            for a in list(value) {
                                peer.allowed_ips.push(parse_net(a, true).map_err(err)?);
                            }
                        }
                        "endpoint" => peer.endpoint = Some(parse_endpoint(value).map_err(err)?),
                        "persistentkeepalive" => {
                            peer.persistent_keepalive =
                                match value {
                                    "off" | "0" => None,
                                    v => Some(v.parse().map_err(|_| {
                                        err(format!("bad PersistentKeepalive {v:?}"))
                                    })?),
                                }
                        }
                        _ => return Err(err(format!("unknown [Peer] key {key:?}"))),
                    }
                }
                (Section::Interface, _) => {
                    return Err(err(format!("unknown [Interface] key {key:?}")));
                }
            }
        }
        let missing = |line: usize, message: &str| ConfigError {
            file: file.to_owned(),
            line,
            message: message.to_owned(),
        };
        cfg.private_key = private_key.ok_or_else(|| missing(1, "[Interface] has no PrivateKey"))?;
        for (peer, &line) in cfg.peers.iter().zip(&peer_lines) {
            if peer.public_key == [0; 32] {
                return Err(missing(line, "[Peer] has no PublicKey"));
            }
        }
        Ok(cfg)
    }
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A base64 WireGuard key (32 bytes).
pub fn parse_key(value: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| format!("key is not base64: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("key is {} bytes, want 32", b.len()))
}

fn parse_net(value: &str, allow_bare: bool) -> Result<IpNet, String> {
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net);
    }
    match value.parse::<std::net::IpAddr>() {
        Ok(ip) if allow_bare || !value.contains('/') => Ok(IpNet::from(ip)),
        _ => Err(format!("bad address {value:?}; want ADDR/PREFIX")),
    }
}

fn parse_endpoint(value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    value
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve endpoint {value:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("endpoint {value:?} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const KEY_B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn parses_a_full_file() {
        let text = format!(
            "# comment\n[Interface]\nPrivateKey = {KEY_A}\nAddress = 10.0.0.1/24, fd00::1/64\nListenPort = 51820\nMTU = 1420\nDNS = 1.1.1.1\n\n\
             [Peer]\nPublicKey = {KEY_B}\nPresharedKey = {KEY_A}\nAllowedIPs = 10.0.0.2/32, fd00::2/128\nEndpoint = 192.0.2.1:51820\nPersistentKeepalive = 25\n"
        );
        let cfg = WgConfig::parse("wg0.conf", &text).unwrap();
        assert_eq!(cfg.addresses.len(), 2);
        assert_eq!(cfg.listen_port, Some(51820));
        assert_eq!(cfg.mtu, Some(1420));
        assert_eq!(cfg.ignored, [(7, "dns".to_owned())]);
        let p = &cfg.peers[0];
        assert_eq!(p.public_key, parse_key(KEY_B).unwrap());
        assert!(p.preshared_key.is_some());
        assert_eq!(p.allowed_ips.len(), 2);
        assert_eq!(p.endpoint, Some("192.0.2.1:51820".parse().unwrap()));
        assert_eq!(p.persistent_keepalive, Some(25));
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            (
                format!("[Interface]\nPrivateKey = {KEY_A}\nAddress = nonsense\n"),
                3,
                "bad address",
            ),
            (
                format!("[Interface]\nPrivateKey = {KEY_A}\nBogus = 1\n"),
                3,
                "unknown [Interface] key",
            ),
            ("[Interface]\nPrivateKey = abc\n".to_owned(), 2, "key is"),
            ("PrivateKey = x\n".to_owned(), 1, "outside any section"),
            (
                format!("[Interface]\nPrivateKey = {KEY_A}\n[Peer]\nAllowedIPs = 10.0.0.0/8\n"),
                3,
                "no PublicKey",
            ),
            (
                format!(
                    "[Interface]\nPrivateKey = {KEY_A}\n[Peer]\nPublicKey = {KEY_B}\nEndpoint = x\n"
                ),
                5,
                "endpoint",
            ),
            (
                format!("[Interface]\nPrivateKey = {KEY_A}\nMTU = 10\n"),
                3,
                "MTU 10 out of range",
            ),
            ("[Interfaces]\n".to_owned(), 1, "unknown section"),
            (
                "[Interface]\nAddress = 10.0.0.1/24\n".to_owned(),
                1,
                "no PrivateKey",
            ),
        ];
        for (text, line, want) in cases {
            let err = WgConfig::parse("t.conf", &text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(
                err.to_string().starts_with(&format!("t.conf:{line}: ")),
                "{err}"
            );
            assert!(err.message.contains(want), "{text:?}: {err}");
        }
    }
}
