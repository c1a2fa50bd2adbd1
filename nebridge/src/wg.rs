//! `codervpn wg up CONFIG`: a plain WireGuard interface from a wg-quick style file.

use std::path::PathBuf;

use anyhow::{Context, bail};
use codervpn_engine::device::linux_tun::create_tun;
use codervpn_engine::device::{FdDevice, Framing};
use codervpn_engine::net::runner;
use codervpn_engine::net::udp::Udp;
use codervpn_engine::net::wg::PeerSet;
use codervpn_engine::net::wg::config::WgConfig;
use tracing::{info, warn};

use crate::netlink::Netlink;

/// Default MTU: 1500 minus IPv6 (40), UDP (8) and WireGuard (32) overheads.
const DEFAULT_MTU: u32 = 1420;

#[derive(clap::Subcommand)]
pub enum WgCommand {
    /// Bring up a WireGuard interface from CONFIG and run it until SIGINT/SIGTERM.
    Up(UpArgs),
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// wg-quick style file: [Interface] PrivateKey, Address, ListenPort, MTU; [Peer]
    /// PublicKey, PresharedKey, AllowedIPs, Endpoint, PersistentKeepalive.
    config: PathBuf,
    /// TUN interface name.
    #[arg(long, default_value = "codervpn0")]
    name: String,
    /// Run without a TUN (no root): a userspace TCP/IP stack with a SOCKS5 server.
    #[arg(long)]
    userspace: bool,
}

pub fn run(cmd: WgCommand) -> anyhow::Result<()> {
    let WgCommand::Up(args) = cmd;
    let file = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {file}"))?;
    let cfg = WgConfig::parse(&file, &text)?;
    for (line, key) in &cfg.ignored {
        warn!("{file}:{line}: {key} is a wg-quick setting; codervpn ignores it");
    }
    if args.userspace {
        bail!("--userspace is not implemented yet: run as root with a TUN interface");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(up(cfg, args.name))
}

async fn up(cfg: WgConfig, name: String) -> anyhow::Result<()> {
    let (fd, name) = create_tun(&name).context("creating the TUN interface (are you root?)")?;
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
    let device = FdDevice::new(fd, Framing::Raw)?;
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
    runner::run(
        peers,
        device,
        udp,
        cmd_rx,
        crate::daemon::terminate_signal(),
    )
    .await?;
    // Closing the TUN descriptor removes the interface with its addresses and routes.
    info!("{name} down");
    Ok(())
}
