//! `codervpn`: the command-line front end.

mod daemon;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Run the tunnel as a child process of a manager (drop-in for `coder vpn-daemon`).
    #[command(name = "vpn-daemon")]
    VpnDaemon {
        #[command(subcommand)]
        command: DaemonCommand,
    },
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
        Command::Version { output } => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "version": codervpn_engine::CODER_VERSION })
                ),
                Output::Text => println!(
                    "codervpn {} (CoderVPN protocol {}; matches Coder {})",
                    env!("CARGO_PKG_VERSION"),
                    codervpn_proto::VersionList::current(),
                    codervpn_engine::CODER_VERSION
                ),
            }
            Ok(())
        }
    }
}
