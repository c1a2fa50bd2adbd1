//! `codervpn vpn-daemon run`: the tunnel on inherited pipe descriptors
//! (dylib-abi-and-compat.md §2).

use std::sync::Arc;

use anyhow::{Context, bail};
use codervpn_engine::host::ManagerLogLayer;
use codervpn_engine::host::inherited_fd;
use codervpn_engine::host::{JoinOptions, TailnetConnector};
use codervpn_engine::host::{TunnelExit, TunnelOptions, serve};
use codervpn_proto::fd::{FdReader, FdWriter};
use codervpn_proto::{Connection, TunnelSide, VersionList};
use tracing::info;
use tracing_subscriber::prelude::*;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Descriptor the manager writes to (manager → tunnel). `--rpc-read-handle` is the
    /// name Coder's Linux and Windows daemons take (macOS's takes `--rpc-read-fd`); env
    /// `CODER_VPN_DAEMON_RPC_READ_FD` or `CODER_VPN_DAEMON_RPC_READ_HANDLE`.
    #[arg(long, alias = "rpc-read-handle", allow_negative_numbers = true)]
    rpc_read_fd: Option<i32>,
    /// Descriptor the manager reads from (tunnel → manager); `--rpc-write-handle`, env
    /// `CODER_VPN_DAEMON_RPC_WRITE_FD` or `CODER_VPN_DAEMON_RPC_WRITE_HANDLE`.
    #[arg(long, alias = "rpc-write-handle", allow_negative_numbers = true)]
    rpc_write_fd: Option<i32>,
    /// In userspace mode (`tunnel_file_descriptor = -1`), serve a SOCKS5 proxy into the
    /// tunnel on this address; workspace names resolve (e.g. `curl --socks5-hostname`).
    #[arg(long, env = "CODERVPN_SOCKS5")]
    socks5: Option<std::net::SocketAddr>,
    #[command(flatten)]
    socks5_access: crate::socks5_opts::Socks5Access,
    /// When the manager sends no TUN (`tunnel_file_descriptor` 0, as Coder's Linux managers
    /// do), make this interface and configure it ourselves, as Coder's Linux daemon does.
    /// (macOS: the manager hands over a utun and applies the network settings itself, as
    /// Coder Desktop's helper does with Coder's daemon.)
    #[cfg(target_os = "linux")]
    #[arg(long, default_value = codervpn_nebridge::daemon_net::DEFAULT_TUN_NAME)]
    tun_name: String,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let read_fd = descriptor(args.rpc_read_fd, "READ")?;
    let write_fd = descriptor(args.rpc_write_fd, "WRITE")?;
    if read_fd < 0 || write_fd < 0 {
        bail!("--rpc-read-fd ({read_fd}) and --rpc-write-fd ({write_fd}) must both be >= 0");
    }
    if read_fd == write_fd {
        bail!("--rpc-read-fd and --rpc-write-fd must differ (both are {read_fd})");
    }
    let socks5_access = match args.socks5 {
        Some(addr) => args.socks5_access.access(addr)?,
        None => codervpn_engine::host::socks5_access::Access::owner(),
    };
    init_logging();
    one_malloc_arena();
    let read = inherited_fd(read_fd).context("--rpc-read-fd")?;
    let write = inherited_fd(write_fd).context("--rpc-write-fd")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let exit = rt.block_on(async move {
        let signalled = terminate_signal()?;
        let reader = FdReader::new(read).context("--rpc-read-fd")?;
        let writer = FdWriter::new(write).context("--rpc-write-fd")?;
        let conn = Connection::<TunnelSide>::handshake(reader, writer, VersionList::current())
            .await
            .context("CoderVPN handshake with the manager")?;
        let connector = TailnetConnector::new(JoinOptions {
            socks5: args.socks5,
            socks5_access,
            ..Default::default()
        });
        #[cfg(target_os = "linux")]
        let connector = codervpn_nebridge::daemon_net::SelfManaged {
            inner: connector,
            tun_name: args.tun_name,
        };
        let opts = TunnelOptions::new(Arc::new(connector));
        anyhow::Ok(serve(conn, opts, signalled).await)
    })?;
    match exit {
        TunnelExit::Stopped => info!("tunnel stopped by the manager"),
        TunnelExit::ManagerGone(reason) => info!(%reason, "manager went away; tunnel ended"),
        TunnelExit::Shutdown => info!("tunnel ended on signal"),
    }
    Ok(())
}

/// One glibc malloc arena for the whole process instead of one per thread that ever
/// allocated: the tunnel allocates nothing per packet, so its few threads never contend,
/// and the resident set with 100 agents drops by ≈ 0.5–1 MiB (BENCHMARKS.md, issue #18).
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no thread has allocated through
    // another arena yet that this would invalidate (arenas already made are kept).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The descriptor from its flag, else `CODER_VPN_DAEMON_RPC_<DIR>_FD`, else
/// `CODER_VPN_DAEMON_RPC_<DIR>_HANDLE` (the Linux desktop app's name).
fn descriptor(flag: Option<i32>, dir: &str) -> anyhow::Result<i32> {
    if let Some(fd) = flag {
        return Ok(fd);
    }
    let lower = dir.to_ascii_lowercase();
    for suffix in ["FD", "HANDLE"] {
        let name = format!("CODER_VPN_DAEMON_RPC_{dir}_{suffix}");
        if let Ok(v) = std::env::var(&name) {
            return v
                .trim()
                .parse()
                .with_context(|| format!("{name}={v:?} is not a descriptor number"));
        }
    }
    bail!(
        "--rpc-{lower}-fd (or --rpc-{lower}-handle, or env CODER_VPN_DAEMON_RPC_{dir}_FD) is required"
    )
}

/// Registers SIGTERM and SIGINT handlers now (so that a signal arriving at any later point
/// is caught) and returns a future that resolves on either.
pub fn terminate_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Logs go to stderr (the Windows service and our managers read it) and, inside the tunnel,
/// to the manager as `Log` messages.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CODERVPN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(ManagerLogLayer.with_filter(tracing_subscriber::filter::LevelFilter::DEBUG))
        .init();
}
