//! `codervpn`: the command-line front end.

mod daemon;
mod demo;
mod socks5_opts;
mod testbed;
mod up;
mod wg;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use codervpn_nebridge::{diag, status};

#[derive(Parser)]
#[command(
    name = "codervpn",
    version,
    about = "A pure-Rust CoderVPN tunnel and manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect this machine to a Coder deployment's workspaces (TUN + routes + split DNS
    /// as root, or userspace behind SOCKS5) until Ctrl-C.
    Up(up::UpArgs),
    /// Try it: a built-in Coder deployment, our tunnel (userspace, no root), a live table
    /// of its workspaces and an agent's web page fetched by name through the tunnel.
    Demo(demo::DemoArgs),
    /// Run the tunnel as a child process of a manager (drop-in for `coder vpn-daemon`).
    #[command(name = "vpn-daemon")]
    VpnDaemon {
        #[command(subcommand)]
        command: DaemonCommand,
    },
    /// Plain WireGuard interfaces (interoperates with wireguard-go, boringtun, the kernel).
    Wg {
        #[command(subcommand)]
        command: wg::WgCommand,
    },
    /// The built-in testbed: a Coder deployment in one process.
    Testbed {
        #[command(subcommand)]
        command: testbed::TestbedCommand,
    },
    /// Show the tunnel state and workspaces of a running `codervpn` (from its status socket).
    Status {
        /// The status socket.
        #[arg(long, default_value = status::DEFAULT_SOCKET)]
        socket: std::path::PathBuf,
        /// Print the status document (JSON, schema in docs/status-json.md) instead of a
        /// table.
        #[arg(long)]
        json: bool,
    },
    /// Ping an agent through the running tunnel: latency and the path taken (direct or
    /// DERP), with hints when it stays relayed.
    Ping(diag::cli::PingArgs),
    /// Check the network towards a Coder deployment (UDP, NAT, DERP latency); needs no
    /// running tunnel.
    Netcheck(diag::cli::NetcheckArgs),
    /// Print the running tunnel's metrics (Prometheus text).
    Metrics {
        /// The status socket.
        #[arg(long, default_value = status::DEFAULT_SOCKET)]
        socket: std::path::PathBuf,
    },
    /// Write a bug report archive: version, OS, status, network, logs and settings, with
    /// secrets redacted.
    Bugreport(diag::cli::BugreportArgs),
    /// Print the version (`--output=json` prints the Coder release this build matches).
    Version {
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum DaemonCommand {
    /// Speak the CoderVPN protocol (tunnel role) on two inherited descriptors until the
    /// manager sends `stop` or closes the pipe.
    Run(daemon::RunArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::VpnDaemon {
            command: DaemonCommand::Run(args),
        } => daemon::run(args),
        Command::Up(args) => {
            let logs = init_up_logging();
            up::run(args, Some(logs))
        }
        Command::Ping(args) => {
            init_cli_logging_default("warn");
            diag::cli::ping(args)
        }
        Command::Netcheck(args) => {
            init_cli_logging_default("warn");
            diag::cli::netcheck_cmd(args)
        }
        Command::Metrics { socket } => diag::cli::metrics(&socket),
        Command::Bugreport(args) => {
            init_cli_logging_default("warn");
            diag::cli::bugreport(args)
        }
        Command::Status { socket, json: true } => diag::cli::status_json(&socket),
        Command::Demo(args) => {
            init_cli_logging_default("warn");
            demo::run(args)
        }
        Command::Wg { command } => {
            init_cli_logging();
            wg::run(command)
        }
        Command::Testbed { command } => {
            init_cli_logging();
            testbed::run(command)
        }
        Command::Status { socket, .. } => {
            let snapshot = status::fetch_status(&socket).with_context(|| {
                format!(
                    "cannot read the status of codervpn from {} (is it running, and may you \
                     read its socket?)",
                    socket.display()
                )
            })?;
            print!("{}", status::format_table(&snapshot));
            Ok(())
        }
        Command::Version { output } => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "version": codervpn_engine::host::CODER_VERSION })
                ),
                Output::Text => println!(
                    "codervpn {} (CoderVPN protocol {}; matches Coder {})",
                    env!("CARGO_PKG_VERSION"),
                    codervpn_proto::VersionList::current(),
                    codervpn_engine::host::CODER_VERSION
                ),
            }
            Ok(())
        }
    }
}

/// Logs to stderr for foreground commands (`CODERVPN_LOG` sets the filter, default info).
fn init_cli_logging() {
    init_cli_logging_default("info");
}

/// `codervpn up` logs to stderr and, where systemd's journal is running, to journald too
/// (the tunnel's own Log frames included; secrets are never logged); the last lines are
/// kept in memory for `codervpn bugreport` (at DEBUG for our own code unless
/// `CODERVPN_LOG` says otherwise).
fn init_up_logging() -> diag::logring::LogRing {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("CODERVPN_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let journald = std::path::Path::new("/run/systemd/journal/socket")
        .exists()
        .then(tracing_journald::layer)
        .and_then(Result::ok)
        .map(|l| {
            l.with_syslog_identifier("codervpn".into())
                .with_filter(filter())
        });
    let ring = diag::logring::LogRing::new(diag::logring::DEFAULT_LINES);
    let ring_filter =
        tracing_subscriber::EnvFilter::try_from_env("CODERVPN_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,codervpn=debug,codervpn_engine=debug,codervpn_nebridge=debug",
            )
        });
    let kept = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(ring.clone())
        .with_filter(ring_filter);
    tracing_subscriber::registry()
        .with(stderr)
        .with(journald)
        .with(kept)
        .init();
    ring
}

/// [`init_cli_logging`] with another default filter.
fn init_cli_logging_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CODERVPN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
}
