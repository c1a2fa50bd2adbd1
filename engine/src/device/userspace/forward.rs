//! TCP port forwards: a host listener whose connections are each proxied to one address
//! through the tunnel (`--forward 127.0.0.1:8080=10.202.0.2:80`).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{debug, info};

use super::{ConnectError, TcpConnector, accept_next};

/// `LOCAL=REMOTE`: listen on the host at LOCAL, connect through the tunnel to REMOTE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSpec {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Why a `LOCAL=REMOTE` forward spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardSpecError {
    #[error("expected LOCAL=REMOTE, like 127.0.0.1:8080=10.202.0.2:80")]
    MissingEquals,
    #[error("local address {0:?} is not IP:PORT (IPv6 as [::1]:8080)")]
    Local(String),
    #[error("remote address {0:?} is not IP:PORT (IPv6 as [fd00::2]:80)")]
    Remote(String),
    #[error("remote address {0} is not a unicast address with a port")]
    RemoteUnaddressable(SocketAddr),
}

impl FromStr for ForwardSpec {
    type Err = ForwardSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((local, remote)) = s.split_once('=') else {
            return Err(ForwardSpecError::MissingEquals);
        };
        let local: SocketAddr = local
            .trim()
            .parse()
            .map_err(|_| ForwardSpecError::Local(local.to_owned()))?;
        let remote: SocketAddr = remote
            .trim()
            .parse()
            .map_err(|_| ForwardSpecError::Remote(remote.to_owned()))?;
        if remote.port() == 0 || remote.ip().is_unspecified() || remote.ip().is_multicast() {
            return Err(ForwardSpecError::RemoteUnaddressable(remote));
        }
        Ok(Self { local, remote })
    }
}

impl fmt::Display for ForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.local, self.remote)
    }
}

/// Proxies every connection accepted on `listener` to `remote` until the task is dropped.
pub async fn serve<C: TcpConnector>(listener: TcpListener, remote: SocketAddr, connector: C) {
    loop {
        let (client, from) = accept_next(&listener, "forward").await;
        let connector = connector.clone();
        tokio::spawn(async move {
            match proxy(client, remote, &connector).await {
                Ok((up, down)) => debug!(%from, %remote, up, down, "forwarded connection done"),
                Err(ProxyError::Connect(e)) => info!(%from, "forward: {e}"),
                Err(ProxyError::Io(e)) => {
                    debug!(%from, %remote, error = %e, "forwarded connection ended with an error")
                }
            }
        });
    }
}

/// Why one proxied connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Connects to `remote` and copies bytes both ways until both halves are closed. If the
/// connect fails, `client` is dropped (closed) unanswered.
pub async fn proxy<S, C>(
    mut client: S,
    remote: SocketAddr,
    connector: &C,
) -> Result<(u64, u64), ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: TcpConnector,
{
    let mut tunnel = connector.connect(remote).await?;
    Ok(tokio::io::copy_bidirectional(&mut client, &mut tunnel).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_ipv4_local_and_remote() {
        let spec: ForwardSpec = "127.0.0.1:8080=10.202.0.2:80".parse().unwrap();
        assert_eq!(spec.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(spec.remote, "10.202.0.2:80".parse().unwrap());
        assert_eq!(spec.to_string(), "127.0.0.1:8080=10.202.0.2:80");
    }

    #[test]
    fn spec_parses_bracketed_ipv6() {
        let spec: ForwardSpec = "[::1]:2222=[fd00::2]:22".parse().unwrap();
        assert_eq!(spec.local, "[::1]:2222".parse().unwrap());
        assert_eq!(spec.remote, "[fd00::2]:22".parse().unwrap());
    }

    #[test]
    fn spec_allows_an_ephemeral_local_port() {
        let spec: ForwardSpec = "127.0.0.1:0=10.202.0.2:80".parse().unwrap();
        assert_eq!(spec.local.port(), 0);
    }

    #[test]
    fn spec_without_equals_is_refused() {
        assert_eq!(
            "127.0.0.1:8080".parse::<ForwardSpec>(),
            Err(ForwardSpecError::MissingEquals)
        );
        assert_eq!(
            "".parse::<ForwardSpec>(),
            Err(ForwardSpecError::MissingEquals)
        );
    }

    #[test]
    fn spec_with_a_bad_local_address_names_it() {
        assert_eq!(
            "8080=10.202.0.2:80".parse::<ForwardSpec>(),
            Err(ForwardSpecError::Local("8080".into()))
        );
        assert_eq!(
            "localhost:8080=10.202.0.2:80".parse::<ForwardSpec>(),
            Err(ForwardSpecError::Local("localhost:8080".into()))
        );
        assert_eq!(
            "::1:8080=10.202.0.2:80".parse::<ForwardSpec>(),
            Err(ForwardSpecError::Local("::1:8080".into()))
        );
    }

    #[test]
    fn spec_with_a_bad_remote_address_names_it() {
        assert_eq!(
            "127.0.0.1:8080=".parse::<ForwardSpec>(),
            Err(ForwardSpecError::Remote("".into()))
        );
        assert_eq!(
            "127.0.0.1:8080=10.202.0.2".parse::<ForwardSpec>(),
            Err(ForwardSpecError::Remote("10.202.0.2".into()))
        );
        assert_eq!(
            "127.0.0.1:8080=10.202.0.2:80=x".parse::<ForwardSpec>(),
            Err(ForwardSpecError::Remote("10.202.0.2:80=x".into()))
        );
        assert_eq!(
            "127.0.0.1:8080=web:80".parse::<ForwardSpec>(),
            Err(ForwardSpecError::Remote("web:80".into()))
        );
        assert_eq!(
            "127.0.0.1:8080=10.202.0.2:70000".parse::<ForwardSpec>(),
            Err(ForwardSpecError::Remote("10.202.0.2:70000".into()))
        );
    }

    #[test]
    fn spec_to_port_zero_or_an_unspecified_address_is_refused() {
        assert_eq!(
            "127.0.0.1:8080=10.202.0.2:0".parse::<ForwardSpec>(),
            Err(ForwardSpecError::RemoteUnaddressable(
                "10.202.0.2:0".parse().unwrap()
            ))
        );
        assert_eq!(
            "127.0.0.1:8080=0.0.0.0:80".parse::<ForwardSpec>(),
            Err(ForwardSpecError::RemoteUnaddressable(
                "0.0.0.0:80".parse().unwrap()
            ))
        );
    }

    #[test]
    fn errors_say_what_is_expected() {
        let e = "x".parse::<ForwardSpec>().unwrap_err();
        assert!(e.to_string().contains("LOCAL=REMOTE"), "{e}");
    }
}
