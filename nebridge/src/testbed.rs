//! `codervpn testbed serve`: the in-process Coder deployment, on its own.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use codervpn_testbed::{Testbed, TestbedConfig};

#[derive(clap::Subcommand)]
pub enum TestbedCommand {
    /// Serve a testbed deployment; prints one JSON line ({"url", "token", "agents", "stun"
    /// unless --no-stun, "ca_file" with --tls and "second_region" with --second-region}) on
    /// stdout, then serves until SIGINT/SIGTERM.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Number of workspaces (one agent each).
    #[arg(long, default_value_t = 3)]
    workspaces: usize,
    /// Agents per workspace.
    #[arg(long, default_value_t = 1)]
    agents: usize,
    /// Owner username.
    #[arg(long, default_value = "testy")]
    username: String,
    /// The version `/api/v2/buildinfo` reports (compat mode checks a downloaded CLI's own
    /// version against it).
    #[arg(long, default_value = codervpn_testbed::DEFAULT_VERSION)]
    server_version: String,
    /// DNS hostname suffix the deployment reports (default: unset, clients use `coder`).
    #[arg(long)]
    hostname_suffix: Option<String>,
    /// Serve HTTPS with a generated CA and a certificate for 127.0.0.1, ::1 and localhost;
    /// the CA's PEM file is named by "ca_file" (e.g. for SSL_CERT_FILE).
    #[arg(long)]
    tls: bool,
    /// Publish a file under /bin/: `NAME=PATH` (repeatable), e.g. a signed tunnel
    /// artifact and its `.minisig` for compat mode.
    #[arg(long = "publish", value_name = "NAME=PATH")]
    publish: Vec<String>,
    /// Do not serve STUN (by default a UDP STUN server on the listen IP, any free port,
    /// published as a STUN-only node of the embedded DERP region; its address is "stun").
    #[arg(long)]
    no_stun: bool,
    /// Run the simulated agents in the network namespace /run/netns/NAME (see
    /// `ip netns`): another host, which must reach --listen.
    #[arg(long, value_name = "NAME")]
    agent_netns: Option<String>,
    /// Also run a second DERP region (ID 1000, "second"): its own relay on another port of
    /// the listen IP ("second_region") and, unless --no-stun, its own STUN server. Agents
    /// stay homed in the embedded region.
    #[arg(long)]
    second_region: bool,
    /// Publish `HomeParams.RegionScore` in the DERP map: `ID=SCORE` (repeatable), a
    /// multiplier clients apply to the region's latency when choosing their home region.
    #[arg(long = "region-score", value_name = "ID=SCORE", value_parser = parse_region_score)]
    region_scores: Vec<(i64, f64)>,
}

fn parse_region_score(s: &str) -> Result<(i64, f64), String> {
    let (id, score) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: want ID=SCORE, e.g. 1000=2.5"))?;
    let id = id
        .parse()
        .map_err(|e| format!("{s:?}: region ID {id:?}: {e}"))?;
    let score: f64 = score
        .parse()
        .map_err(|e| format!("{s:?}: score {score:?}: {e}"))?;
    if !score.is_finite() {
        return Err(format!("{s:?}: the score must be a finite number"));
    }
    Ok((id, score))
}

pub fn run(cmd: TestbedCommand) -> anyhow::Result<()> {
    let TestbedCommand::Serve(args) = cmd;
    let agent_netns = args.agent_netns.as_deref().map(netns_path).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let stop = crate::daemon::terminate_signal()?;
        let tb = Testbed::start(TestbedConfig {
            listen: args.listen,
            workspaces: args.workspaces,
            agents_per_workspace: args.agents,
            username: args.username,
            version: args.server_version,
            hostname_suffix: args.hostname_suffix,
            tls: args.tls,
            stun: !args.no_stun,
            agent_netns,
            second_region: args.second_region,
            region_scores: args.region_scores,
            ..TestbedConfig::default()
        })
        .await?;
        for p in &args.publish {
            let (name, path) = p
                .split_once('=')
                .with_context(|| format!("--publish {p:?}: want NAME=PATH"))?;
            let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
            tb.publish(name, bytes);
        }
        println!("{}", tb.summary());
        stop.await;
        drop(tb);
        anyhow::Ok(())
    })
}

/// `/run/netns/NAME` for a namespace made by `ip netns add NAME`.
fn netns_path(name: &str) -> anyhow::Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        anyhow::bail!("--agent-netns {name:?}: want the name of a namespace in /run/netns");
    }
    Ok(PathBuf::from("/run/netns").join(name))
}

#[cfg(test)]
mod tests {
    use super::parse_region_score;

    #[test]
    fn region_score_is_id_equals_a_finite_number() {
        assert_eq!(parse_region_score("1000=2.5"), Ok((1000, 2.5)));
        for bad in ["1000", "x=1", "1000=fast", "1000=inf", "1000=NaN"] {
            let e = parse_region_score(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
