//! The `ifconfig(8)` and `route(8)` invocations that configure a utun on macOS: built as
//! argument vectors (no shell), checked here, run by the caller on a Mac.

use std::net::IpAddr;

/// A command: the program's absolute path and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub program: &'static str,
    pub args: Vec<String>,
}

const IFCONFIG: &str = "/sbin/ifconfig";
const ROUTE: &str = "/sbin/route";

/// Why a command could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0:?} is not a utun interface name (utun0, utun1, …)")]
    NotUtun(String),
    #[error("prefix length {prefix} is too long for {addr}")]
    BadPrefix { addr: IpAddr, prefix: u8 },
}

fn utun(name: &str) -> Result<String, CommandError> {
    match name.strip_prefix("utun") {
        Some(n) if !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(name.to_owned())
        }
        _ => Err(CommandError::NotUtun(name.to_owned())),
    }
}

fn check_prefix(addr: IpAddr, prefix: u8) -> Result<(), CommandError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(CommandError::BadPrefix { addr, prefix });
    }
    Ok(())
}

fn cmd(program: &'static str, args: &[&str]) -> Command {
    Command {
        program,
        args: args.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Gives the interface an address. A utun is point-to-point: an IPv4 address is its own
/// destination.
pub fn add_address(ifname: &str, addr: IpAddr, prefix: u8) -> Result<Command, CommandError> {
    let ifname = utun(ifname)?;
    check_prefix(addr, prefix)?;
    let a = addr.to_string();
    Ok(match addr {
        IpAddr::V6(_) => cmd(
            IFCONFIG,
            &[
                &ifname,
                "inet6",
                &a,
                "prefixlen",
                &prefix.to_string(),
                "alias",
            ],
        ),
        IpAddr::V4(_) => cmd(IFCONFIG, &[&ifname, "inet", &a, &a, "alias"]),
    })
}

/// Takes an address away from the interface (`-alias`).
pub fn remove_address(ifname: &str, addr: IpAddr) -> Result<Command, CommandError> {
    let ifname = utun(ifname)?;
    let family = if addr.is_ipv4() { "inet" } else { "inet6" };
    Ok(cmd(
        IFCONFIG,
        &[&ifname, family, &addr.to_string(), "-alias"],
    ))
}

/// Sets the MTU and brings the interface up.
pub fn mtu_up(ifname: &str, mtu: u32) -> Result<Command, CommandError> {
    let ifname = utun(ifname)?;
    Ok(cmd(IFCONFIG, &[&ifname, "mtu", &mtu.to_string(), "up"]))
}

/// Routes `net/prefix` through the interface (`add`), or takes the route away.
pub fn route(add: bool, net: IpAddr, prefix: u8, ifname: &str) -> Result<Command, CommandError> {
    let ifname = utun(ifname)?;
    check_prefix(net, prefix)?;
    let family = if net.is_ipv4() { "-inet" } else { "-inet6" };
    let op = if add { "add" } else { "delete" };
    let dest = format!("{net}/{prefix}");
    Ok(cmd(
        ROUTE,
        &["-q", "-n", op, family, "-net", &dest, "-interface", &ifname],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coder_tunnel_gets_its_address_mtu_and_route_as_commands() {
        let a: IpAddr = "fd60:627a:a42b:1::2".parse().unwrap();
        assert_eq!(
            add_address("utun7", a, 128).unwrap().args,
            [
                "utun7",
                "inet6",
                "fd60:627a:a42b:1::2",
                "prefixlen",
                "128",
                "alias"
            ]
        );
        assert_eq!(
            add_address("utun7", "100.64.0.2".parse().unwrap(), 32)
                .unwrap()
                .args,
            ["utun7", "inet", "100.64.0.2", "100.64.0.2", "alias"]
        );
        let c = mtu_up("utun7", 1280).unwrap();
        assert_eq!(
            (c.program, c.args),
            (
                IFCONFIG,
                vec!["utun7".into(), "mtu".into(), "1280".into(), "up".into()]
            )
        );
        let net: IpAddr = "fd60:627a:a42b::".parse().unwrap();
        let r = route(true, net, 48, "utun7").unwrap();
        assert_eq!(r.program, ROUTE);
        assert_eq!(
            r.args,
            [
                "-q",
                "-n",
                "add",
                "-inet6",
                "-net",
                "fd60:627a:a42b::/48",
                "-interface",
                "utun7"
            ]
        );
        assert_eq!(route(false, net, 48, "utun7").unwrap().args[2], "delete");
        assert_eq!(
            remove_address("utun7", a).unwrap().args,
            ["utun7", "inet6", "fd60:627a:a42b:1::2", "-alias"]
        );
    }

    #[test]
    fn only_utun_names_and_real_prefixes_are_accepted() {
        let a: IpAddr = "fd60::1".parse().unwrap();
        for bad in ["en0", "utun", "utun-1", "utun1; rm -rf /", "utun12345"] {
            assert!(
                matches!(mtu_up(bad, 1280), Err(CommandError::NotUtun(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            add_address("utun1", a, 129),
            Err(CommandError::BadPrefix { .. })
        ));
        assert!(route(true, "10.0.0.0".parse().unwrap(), 33, "utun1").is_err());
    }
}
