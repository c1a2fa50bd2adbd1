//! `codervpn-daemon`: only the tunnel — `codervpn-daemon vpn-daemon run …`, the same command
//! line as `codervpn vpn-daemon run` (and Coder's `coder vpn-daemon run`) — for managers that
//! spawn a daemon and for packaging. It links none of the other commands (the testbed, the
//! demo, `up`, the compat modes, diagnostics), so less of it is read into memory: see
//! BENCHMARKS.md "Joining a deployment with 100 agents".

#[path = "../daemon.rs"]
mod daemon;
#[path = "../socks5_opts.rs"]
mod socks5_opts;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "codervpn-daemon",
    version,
    about = "The codervpn tunnel as a manager's child process (drop-in for `coder vpn-daemon`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the tunnel as a child process of a manager.
    #[command(name = "vpn-daemon")]
    VpnDaemon {
        #[command(subcommand)]
        command: DaemonCommand,
    },
}

#[derive(Subcommand)]
enum DaemonCommand {
    /// Speak the CoderVPN protocol (tunnel role) on two inherited descriptors until the
    /// manager sends `stop` or closes the pipe.
    Run(daemon::RunArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::VpnDaemon {
            command: DaemonCommand::Run(args),
        } => daemon::run(args),
    }
}
