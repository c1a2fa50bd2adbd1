//! `codervpn wg up CONFIG`: a plain WireGuard interface from a wg-quick style file — on a
//! TUN (root), or with `--userspace` in a smoltcp stack reached through SOCKS5 and port
//! forwards (no TUN, no netlink, no root).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use codervpn_engine::device::linux_tun::create_tun;
use codervpn_engine::device::userspace::forward::{self, ForwardSpec};
use codervpn_engine::device::userspace::{UserspaceConfig, socks5};
use codervpn_engine::device::{FdDevice, UserspaceDevice};
use codervpn_engine::net::runner;
use codervpn_engine::net::udp::Udp;
use codervpn_engine::net::wg::PeerSet;
use codervpn_engine::net::wg::config::WgConfig;
use codervpn_nebridge::netlink::Netlink;
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
    /// With --userspace: serve SOCKS5 (no authentication, CONNECT) on this host address,
    /// e.g. 127.0.0.1:1080; its connections go through the tunnel.
    #[arg(long, value_name = "ADDR")]
    socks5: Option<SocketAddr>,
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
    if args.userspace {
        rt.block_on(up_userspace(cfg, args.socks5, args.forward))
    } else {
        rt.block_on(up(cfg, args.name))
    }
}

async fn up(cfg: WgConfig, name: String) -> anyhow::Result<()> {
    let signalled = crate::daemon::terminate_signal()?;
    let (fd, name, framing) =
        create_tun(&name, true).context("creating the TUN interface (are you root?)")?;
    let nl = Netlink::connect()?;
    let index = nl.link_index(&name).await?;
    let mtu = cfg.mtu.unwrap_or(DEFAULT_MTU);
    for addr in &cfg.addresses {
        nl.add_address(index, *addr).await?;
    }
    nl.set_mtu_and_up(index, mtu).await?;
    for peer in &cfg.peers {
        for net in &peer.allowed_ips {
            if net.prefix_len() == 0 {
                warn!(%net, "not routing a default route through {name}: that needs policy routing, which codervpn does not install");
                continue;
            }
            if cfg.addresses.iter().any(|a| a.trunc() == net.trunc()) {
                continue; // the address already brought this route
            }
            nl.add_route(index, *net).await?;
        }
    }
    let udp = Udp::bind(cfg.listen_port.unwrap_or(0))?;
    let port = udp.local_port()?;
    let mut peers = PeerSet::new(cfg.private_key);
    let count = cfg.peers.len();
    for peer in cfg.peers {
        peers.upsert_peer(peer);
    }
    let device = FdDevice::new(fd, framing)?;
    let addrs: Vec<String> = cfg.addresses.iter().map(ToString::to_string).collect();
    eprintln!(
        "{name} up: {}, MTU {mtu}, UDP port {port}, {count} peer(s). Ctrl-C to stop.",
        if addrs.is_empty() {
            "no address".to_owned()
        } else {
            addrs.join(", ")
        }
    );
    let (_cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(16);
    runner::run(peers, device, udp, cmd_rx, Default::default(), signalled).await?;
    // Closing the TUN descriptor removes the interface with its addresses and routes.
    info!("{name} down");
    Ok(())
}

/// The tunnel in a userspace stack: no TUN, no netlink, no root.
async fn up_userspace(
    cfg: WgConfig,
    socks: Option<SocketAddr>,
    forwards: Vec<ForwardSpec>,
) -> anyhow::Result<()> {
    if socks.is_none() && forwards.is_empty() {
        warn!(
            "--userspace without --socks5 or --forward: the tunnel will answer pings and nothing else"
        );
    }
    let mtu = cfg.mtu.unwrap_or(DEFAULT_MTU);
    let mut stack_cfg = UserspaceConfig::new(cfg.addresses.clone());
    stack_cfg.mtu = usize::try_from(mtu).context("MTU")?;
    stack_cfg.reachable = cfg
        .addresses
        .iter()
        .map(|a| a.trunc())
        .chain(cfg.peers.iter().flat_map(|p| p.allowed_ips.iter().copied()))
        .collect();
    // Bind every listener before anything runs: a taken port is an error at start.
    let socks_listener = match socks {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the SOCKS5 listener on {addr}"))?,
        ),
        None => None,
    };
    let mut forward_listeners = Vec::with_capacity(forwards.len());
    for spec in &forwards {
        let listener = TcpListener::bind(spec.local)
            .await
            .with_context(|| format!("binding the listener of --forward {spec}"))?;
        forward_listeners.push((listener, spec.remote));
    }
    let (device, stack) =
        UserspaceDevice::new(stack_cfg).context("setting up the userspace stack")?;
    let udp = Udp::bind(cfg.listen_port.unwrap_or(0))?;
    let port = udp.local_port()?;
    let mut peers = PeerSet::new(cfg.private_key);
    let count = cfg.peers.len();
    for peer in cfg.peers {
        peers.upsert_peer(peer);
    }
    let stop = crate::daemon::terminate_signal()?;
    let mut servers = tokio::task::JoinSet::new();
    if let Some(listener) = socks_listener {
        eprintln!("SOCKS5 listening on {}", listener.local_addr()?);
        servers.spawn(socks5::serve(listener, stack.clone()));
    }
    for (listener, remote) in forward_listeners {
        eprintln!(
            "forward listening on {} -> {remote} through the tunnel",
            listener.local_addr()?
        );
        servers.spawn(forward::serve(listener, remote, stack.clone()));
    }
    let addrs: Vec<String> = cfg.addresses.iter().map(ToString::to_string).collect();
    // Printed last: scripts wait for this line to know every listener is up.
    eprintln!(
        "userspace tunnel up: {}, MTU {mtu}, UDP port {port}, {count} peer(s). Ctrl-C to stop.",
        addrs.join(", ")
    );
    let (_cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(16);
    let result = runner::run(peers, device, udp, cmd_rx, Default::default(), stop).await;
    // The runner dropped the device: the stack stops and open connections end.
    servers.shutdown().await;
    result?;
    info!("userspace tunnel down");
    Ok(())
}
