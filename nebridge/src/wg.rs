//! `codervpn wg up CONFIG`: a plain WireGuard interface from a wg-quick style file — on a
//! TUN (root), or with `--userspace` in a smoltcp stack reached through SOCKS5 and port
//! forwards (no TUN, no netlink, no root).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use codervpn_engine::host::WgConfig;
use codervpn_engine::host::{DataPlaneSpec, DeviceSpec, connect};
use codervpn_engine::host::{ForwardSpec, forward};
use codervpn_engine::host::{UserspaceConfig, socks5, socks5_access};
#[cfg(target_os = "linux")]
use codervpn_nebridge::netlink::Netlink;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Default MTU: 1500 minus IPv6 (40), UDP (8) and WireGuard (32) overheads.
const DEFAULT_MTU: u32 = 1420;

#[derive(clap::Subcommand)]
pub enum WgCommand {
    /// Bring up a WireGuard interface from CONFIG and run it until SIGINT/SIGTERM.
    Up(UpArgs),
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// wg-quick style file: an Interface section (PrivateKey, Address, ListenPort, MTU) and
    /// Peer sections (PublicKey, PresharedKey, AllowedIPs, Endpoint, PersistentKeepalive).
    config: PathBuf,
    /// TUN interface name.
    #[arg(long, default_value = "codervpn0")]
    name: String,
    /// Run without a TUN (no root): a userspace TCP/IP stack, reached through --socks5
    /// and --forward.
    #[arg(long)]
    userspace: bool,
    /// With --userspace: serve SOCKS5 (CONNECT) on this host address, e.g.
    /// 127.0.0.1:1080; its connections go through the tunnel.
    #[arg(long, value_name = "ADDR")]
    socks5: Option<SocketAddr>,
    #[command(flatten)]
    socks5_access: crate::socks5_opts::Socks5Access,
    /// With --userspace: listen on LOCAL and proxy each connection to REMOTE through the
    /// tunnel, e.g. 127.0.0.1:8080=10.202.0.2:80. Repeatable.
    #[arg(long, value_name = "LOCAL=REMOTE")]
    forward: Vec<ForwardSpec>,
}

pub fn run(cmd: WgCommand) -> anyhow::Result<()> {
    let WgCommand::Up(args) = cmd;
    let file = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {file}"))?;
    let cfg = WgConfig::parse(&file, &text)?;
    for (line, key) in &cfg.ignored {
        warn!("{file}:{line}: {key} is a wg-quick setting; codervpn ignores it");
    }
    if !args.userspace && (args.socks5.is_some() || !args.forward.is_empty()) {
        bail!(
            "--socks5 and --forward need --userspace (with a TUN, programs reach the tunnel directly)"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(up(cfg, args))
}

/// Brings the tunnel up — on a TUN configured here, or in a userspace stack with its
/// listeners — and runs it until SIGINT/SIGTERM.
async fn up(cfg: WgConfig, args: UpArgs) -> anyhow::Result<()> {
    let mtu = cfg.mtu.unwrap_or(DEFAULT_MTU);
    let addresses = cfg.addresses.clone();
    let allowed: Vec<IpNet> = cfg
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.clone())
        .collect();
    let count = cfg.peers.len();
    let mut access = None;
    let (device, listeners) = if args.userspace {
        let mut stack_cfg = UserspaceConfig::new(addresses.clone());
        stack_cfg.mtu = usize::try_from(mtu).context("MTU")?;
        stack_cfg.reachable = addresses
            .iter()
            .map(IpNet::trunc)
            .chain(allowed.clone())
            .collect();
        let listeners = bind_listeners(args.socks5, &args.forward).await?;
        access = match args.socks5 {
            Some(addr) => Some(args.socks5_access.access(addr)?),
            None => None,
        };
        (DeviceSpec::Userspace(stack_cfg), listeners)
    } else {
        (tun_spec(args.name)?, Vec::new())
    };
    let spec = DataPlaneSpec {
        udp_port: cfg.listen_port.unwrap_or(0),
        peers: cfg.peers,
        ..DataPlaneSpec::new(cfg.private_key, device)
    };
    let plane = connect::start(spec, crate::daemon::terminate_signal()?).await?;
    let mut servers = tokio::task::JoinSet::new();
    let what = match (&plane.interface, &plane.stack) {
        (Some(name), _) => {
            configure_tun(name, &addresses, &allowed, mtu).await?;
            name.clone()
        }
        (None, Some(stack)) => {
            for (listener, remote) in listeners {
                let local = listener.local_addr()?;
                match remote {
                    None => {
                        eprintln!("SOCKS5 listening on {local}");
                        let access = access.clone().unwrap_or_else(socks5_access::Access::owner);
                        servers.spawn(socks5::serve(listener, stack.clone(), access));
                    }
                    Some(remote) => {
                        eprintln!("forward listening on {local} -> {remote} through the tunnel");
                        servers.spawn(forward::serve(listener, remote, stack.clone()));
                    }
                }
            }
            "userspace tunnel".to_owned()
        }
        (None, None) => bail!("the data plane has neither a TUN nor a userspace stack"),
    };
    let addrs: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    // Printed last: scripts wait for this line to know every listener is up.
    eprintln!(
        "{what} up: {}, MTU {mtu}, UDP port {}, {count} peer(s). Ctrl-C to stop.",
        if addrs.is_empty() {
            "no address".to_owned()
        } else {
            addrs.join(", ")
        },
        plane.udp_port,
    );
    let result = plane.task.await.context("the data plane task")?;
    // The runner dropped the device: a TUN goes with its addresses and routes, a userspace
    // stack stops and its open connections end.
    servers.shutdown().await;
    result?;
    info!("{what} down");
    Ok(())
}

/// Binds the userspace listeners before anything runs (a taken port is an error at start):
/// each with its `--forward` target, or none for SOCKS5.
async fn bind_listeners(
    socks: Option<SocketAddr>,
    forwards: &[ForwardSpec],
) -> anyhow::Result<Vec<(TcpListener, Option<SocketAddr>)>> {
    if socks.is_none() && forwards.is_empty() {
        warn!(
            "--userspace without --socks5 or --forward: the tunnel will answer pings and nothing else"
        );
    }
    let mut listeners = Vec::with_capacity(forwards.len() + 1);
    if let Some(addr) = socks {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the SOCKS5 listener on {addr}"))?;
        listeners.push((listener, None));
    }
    for spec in forwards {
        let listener = TcpListener::bind(spec.local)
            .await
            .with_context(|| format!("binding the listener of --forward {spec}"))?;
        listeners.push((listener, Some(spec.remote)));
    }
    Ok(listeners)
}

/// A TUN interface created by the data plane: Linux only for now (macOS's utun backend
/// serves `codervpn up`, issue #15).
#[cfg(target_os = "linux")]
fn tun_spec(name: String) -> anyhow::Result<DeviceSpec> {
    Ok(DeviceSpec::Tun { name })
}

#[cfg(not(target_os = "linux"))]
fn tun_spec(_name: String) -> anyhow::Result<DeviceSpec> {
    bail!("codervpn wg up: a TUN interface is Linux only for now; use --userspace")
}

/// Never reached elsewhere: [`tun_spec`] refused the TUN already.
#[cfg(not(target_os = "linux"))]
async fn configure_tun(_: &str, _: &[IpNet], _: &[IpNet], _: u32) -> anyhow::Result<()> {
    tun_spec(String::new()).map(drop)
}

/// Gives the TUN `name` its addresses, MTU and the peers' routes, and brings it up.
#[cfg(target_os = "linux")]
async fn configure_tun(
    name: &str,
    addresses: &[IpNet],
    allowed: &[IpNet],
    mtu: u32,
) -> anyhow::Result<()> {
    let nl = Netlink::connect()?;
    let index = nl.link_index(name).await?;
    for addr in addresses {
        nl.add_address(index, *addr).await?;
    }
    nl.set_mtu_and_up(index, mtu).await?;
    for net in allowed {
        if net.prefix_len() == 0 {
            warn!(%net, "not routing a default route through {name}: that needs policy routing, which codervpn does not install");
            continue;
        }
        if addresses.iter().any(|a| a.trunc() == net.trunc()) {
            continue; // the address already brought this route
        }
        nl.add_route(index, *net).await?;
    }
    Ok(())
}
