//! The diagnostic commands: `codervpn status --json`, `ping`, `metrics`, `bugreport` (ask a
//! running `codervpn up` over its status socket) and `netcheck` (needs no tunnel).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::netcheck;
use super::statusdoc::{AgentDoc, PathDoc, StatusDoc};
use crate::status::{self, StatusConn};

fn connect(socket: &Path) -> anyhow::Result<StatusConn> {
    StatusConn::connect(socket).with_context(|| {
        format!(
            "cannot reach codervpn at {} (is `codervpn up` running, and may you read its socket?)",
            socket.display()
        )
    })
}

/// The running tunnel's status document.
pub fn fetch_doc(conn: &mut StatusConn) -> anyhow::Result<StatusDoc> {
    let v = conn.ask(&json!({ "request": "status" }), Duration::from_secs(10))?;
    serde_json::from_value(v["status"].clone()).context("reading the status document")
}

/// `codervpn status --json`.
pub fn status_json(socket: &Path) -> anyhow::Result<()> {
    let doc = fetch_doc(&mut connect(socket)?)?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// `codervpn metrics`.
pub fn metrics(socket: &Path) -> anyhow::Result<()> {
    let v = connect(socket)?.ask(&json!({ "request": "metrics" }), Duration::from_secs(10))?;
    print!("{}", v["text"].as_str().unwrap_or_default());
    Ok(())
}

#[derive(clap::Args)]
pub struct PingArgs {
    /// An agent's name (`main.dev1`, `dev1`, `main.dev1.me.coder`) or tunnel address.
    target: String,
    /// How many pings.
    #[arg(short = 'c', long, default_value_t = 5)]
    count: u32,
    /// Stop at the first pong that came directly (not through DERP); fail if none does.
    #[arg(long)]
    until_direct: bool,
    /// Time a TCP connect to this port through the tunnel instead of a disco ping.
    #[arg(long, value_name = "PORT")]
    tcp: Option<u16>,
    /// Seconds between pings.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Seconds to wait for each pong.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// The status socket of the running `codervpn up`.
    #[arg(long, default_value = status::DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// Finds the agent `target` names: an address of it, its host or an FQDN, or a prefix of
/// its host (`main.dev1`, or the workspace alone when it has one agent).
pub fn resolve(doc: &StatusDoc, target: &str) -> anyhow::Result<(IpAddr, Option<AgentDoc>)> {
    let agents: Vec<&AgentDoc> = doc.workspaces.iter().flat_map(|w| &w.agents).collect();
    if let Ok(ip) = target.parse::<IpAddr>() {
        let agent = agents
            .iter()
            .find(|a| a.addresses.iter().any(|s| s.parse() == Ok(ip)));
        return Ok((ip, agent.map(|a| (*a).clone())));
    }
    let t = target.trim_end_matches('.').to_ascii_lowercase();
    let names = |a: &AgentDoc| -> Vec<String> {
        let mut v: Vec<String> = a
            .fqdns
            .iter()
            .map(|f| f.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        v.extend(a.host.iter().map(|h| h.to_ascii_lowercase()));
        v
    };
    let exact: Vec<&&AgentDoc> = agents.iter().filter(|a| names(a).contains(&t)).collect();
    let prefix: Vec<&&AgentDoc> = agents
        .iter()
        .filter(|a| names(a).iter().any(|n| n.starts_with(&format!("{t}."))))
        .collect();
    let one = match (exact.as_slice(), prefix.as_slice()) {
        ([a], _) | ([], [a]) => **a,
        ([], []) => bail!(
            "no agent is called {target:?}; `codervpn status` lists them ({} known)",
            agents.len()
        ),
        _ => bail!("{target:?} names more than one agent; give its full name"),
    };
    let ip = one
        .addresses
        .iter()
        .find_map(|s| s.parse().ok())
        .with_context(|| format!("agent {target:?} has no address yet"))?;
    Ok((ip, Some(one.clone())))
}

/// A path as `ping` shows it; "unknown" when the tunnel told none.
fn path_text(p: Option<&PathDoc>) -> String {
    p.map_or_else(|| "unknown".to_owned(), PathDoc::text)
}

/// `codervpn ping`.
pub fn ping(args: PingArgs) -> anyhow::Result<()> {
    let mut conn = connect(&args.socket)?;
    let mut doc = fetch_doc(&mut conn)?;
    // Right after `up` connects the workspace list may still be on its way: a name that
    // is not known yet gets a few seconds.
    let give_up = Instant::now() + Duration::from_secs(5);
    let (ip, agent) = loop {
        match resolve(&doc, &args.target) {
            Ok(found) => break found,
            Err(_) if Instant::now() < give_up && args.target.parse::<IpAddr>().is_err() => {
                std::thread::sleep(Duration::from_millis(250));
                doc = fetch_doc(&mut conn)?;
            }
            Err(e) => return Err(e),
        }
    };
    let shown = agent
        .as_ref()
        .and_then(|a| a.host.clone())
        .unwrap_or_else(|| ip.to_string());
    let timeout = Duration::from_secs_f64(args.timeout.clamp(0.1, 30.0));
    let interval = Duration::from_secs_f64(args.interval.clamp(0.0, 60.0));
    let mut rtts = Vec::new();
    let mut direct = false;
    let mut last_path = String::new();
    for i in 0..args.count.max(1) {
        if i > 0 {
            std::thread::sleep(interval);
        }
        let pong = match args.tcp {
            Some(port) => tcp_ping(&mut conn, ip, port, timeout, &agent),
            None => disco_ping(&mut conn, ip, timeout),
        };
        match pong {
            Ok((rtt, path, is_direct)) => {
                println!(
                    "pong from {shown} ({ip}) via {path} in {:.2} ms",
                    rtt.as_secs_f64() * 1e3
                );
                rtts.push(rtt);
                direct = is_direct;
                last_path = path;
                if args.until_direct && direct {
                    break;
                }
            }
            Err(e) => println!("no pong from {shown} ({ip}): {e:#}"),
        }
    }
    let tries = if args.until_direct && direct {
        rtts.len()
    } else {
        args.count.max(1) as usize
    };
    println!("--- {shown} ---");
    if rtts.is_empty() {
        bail!("{tries} pings, no pong");
    }
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let min = rtts.iter().map(ms).fold(f64::MAX, f64::min);
    let max = rtts.iter().map(ms).fold(0.0, f64::max);
    let avg = rtts.iter().map(ms).sum::<f64>() / rtts.len() as f64;
    println!(
        "{tries} pings, {} pongs, {} lost; min/avg/max {min:.2}/{avg:.2}/{max:.2} ms; path {last_path}",
        rtts.len(),
        tries - rtts.len()
    );
    if !direct {
        let doc = fetch_doc(&mut conn).unwrap_or(doc);
        println!("The path is relayed through DERP. Likely why:");
        for h in netcheck::hints(netcheck::session_facts(&doc)) {
            println!("  - {h}");
        }
        if args.until_direct {
            bail!("no direct path after {tries} pings");
        }
    }
    Ok(())
}

fn disco_ping(
    conn: &mut StatusConn,
    ip: IpAddr,
    timeout: Duration,
) -> anyhow::Result<(Duration, String, bool)> {
    let v = conn.ask(
        &json!({ "request": "ping", "address": ip.to_string(), "timeout_ms": timeout.as_millis() as u64 }),
        timeout + Duration::from_secs(2),
    )?;
    let rtt = Duration::from_secs_f64(v["latency_ms"].as_f64().unwrap_or(0.0) / 1e3);
    let path: Option<PathDoc> = serde_json::from_value(v["path"].clone()).ok();
    let direct = matches!(path, Some(PathDoc::Direct { .. }));
    Ok((rtt, path_text(path.as_ref()), direct))
}

fn tcp_ping(
    conn: &mut StatusConn,
    ip: IpAddr,
    port: u16,
    timeout: Duration,
    agent: &Option<AgentDoc>,
) -> anyhow::Result<(Duration, String, bool)> {
    let start = Instant::now();
    std::net::TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout).with_context(
        || format!("TCP connect to port {port} (in userspace mode, use the SOCKS5 proxy instead)"),
    )?;
    let rtt = start.elapsed();
    let doc = fetch_doc(conn)?;
    let path = agent
        .as_ref()
        .and_then(|a| {
            doc.workspaces
                .iter()
                .flat_map(|w| &w.agents)
                .find(|x| x.id == a.id)
                .map(|x| x.path.clone())
        })
        .flatten();
    let direct = matches!(path, Some(PathDoc::Direct { .. }));
    Ok((
        rtt,
        format!("TCP :{port}, {}", path_text(path.as_ref())),
        direct,
    ))
}

/// Where a Coder deployment is and how to authenticate to it (`up`, `netcheck`).
#[derive(clap::Args, Clone)]
pub struct DeploymentArgs {
    /// The Coder deployment's URL.
    #[arg(long, env = "CODER_URL")]
    pub url: url::Url,
    /// A session token (`coder tokens create`, or `coder login` then
    /// `coder login token`).
    #[arg(long, env = "CODER_SESSION_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Extra header sent on every request, `Name=Value` (repeatable; for deployments
    /// behind authenticating proxies).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
}

impl DeploymentArgs {
    /// The `--header` values as (name, value) pairs.
    pub fn header_pairs(&self) -> anyhow::Result<Vec<(String, String)>> {
        headers(&self.headers)
    }
}

#[derive(clap::Args)]
pub struct NetcheckArgs {
    #[command(flatten)]
    deployment: DeploymentArgs,
    /// Print JSON instead of the report.
    #[arg(long)]
    json: bool,
}

/// `NAME=VALUE` strings as (name, value) pairs (the name trimmed; `=` may recur in the
/// value).
pub fn headers(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|h| {
            h.split_once('=')
                .map(|(n, v)| (n.trim().to_owned(), v.to_owned()))
                .with_context(|| format!("--header {h:?}: want NAME=VALUE"))
        })
        .collect()
}

/// Runs a netcheck against `url` (what `netcheck` and `bugreport` use).
pub fn run_netcheck(
    url: &url::Url,
    token: &str,
    headers: &[(String, String)],
) -> anyhow::Result<codervpn_engine::host::ProbeReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(codervpn_engine::host::probe(url, token, headers, None))?)
}

/// `codervpn netcheck`.
pub fn netcheck_cmd(args: NetcheckArgs) -> anyhow::Result<()> {
    let d = &args.deployment;
    let h = d.header_pairs()?;
    eprintln!(
        "▸ probing the network towards {} (STUN {} s, TCP to each relay)",
        d.url,
        codervpn_engine::host::STUN_WAIT.as_secs()
    );
    let r = run_netcheck(&d.url, &d.token, &h)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&netcheck::probe_json(&r))?
        );
    } else {
        print!("{}", netcheck::format_probe(&r));
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct BugreportArgs {
    /// Where to write the archive (default: `codervpn-bugreport-<time>.tar.gz` here).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The status socket of the running `codervpn up`.
    #[arg(long, default_value = status::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Run a netcheck against this deployment (with --token) when no tunnel answers (a
    /// running `up` runs one itself).
    #[arg(long, env = "CODER_URL")]
    url: Option<url::Url>,
    #[arg(long, env = "CODER_SESSION_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Headers for the netcheck (their values are redacted too).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
}

/// `codervpn bugreport`.
pub fn bugreport(args: BugreportArgs) -> anyhow::Result<()> {
    let h = headers(&args.headers)?;
    let mut secrets: Vec<String> = h.iter().map(|(_, v)| v.clone()).collect();
    secrets.extend(args.token.clone());
    let mut files = vec![
        (
            "version.txt".to_owned(),
            format!(
                "codervpn {} (CoderVPN protocol {}; matches Coder {})\n",
                env!("CARGO_PKG_VERSION"),
                codervpn_proto::VersionList::current(),
                codervpn_engine::host::CODER_VERSION
            ),
        ),
        ("os.txt".to_owned(), super::bugreport::os_description()),
    ];
    eprintln!("▸ asking the tunnel at {}", args.socket.display());
    match connect(&args.socket)
        .and_then(|mut c| Ok(c.ask(&json!({ "request": "bugreport" }), Duration::from_secs(20))?))
    {
        Ok(v) => {
            for f in v["files"].as_array().into_iter().flatten() {
                if let (Some(name), Some(text)) = (f["name"].as_str(), f["text"].as_str()) {
                    // Names come from the tunnel: keep them plain file names.
                    let name: String = name
                        .chars()
                        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                        .collect();
                    files.push((name, text.to_owned()));
                }
            }
        }
        Err(e) => files.push((
            "tunnel.txt".to_owned(),
            format!("no tunnel report: {e:#}\n"),
        )),
    }
    let have_netcheck = files.iter().any(|(n, _)| n == "netcheck.txt");
    if let (Some(url), Some(token), false) = (&args.url, &args.token, have_netcheck) {
        eprintln!("▸ running a netcheck against {url}");
        let text = match run_netcheck(url, token, &h) {
            Ok(r) => netcheck::format_probe(&r),
            Err(e) => format!("netcheck failed: {e:#}\n"),
        };
        files.push(("netcheck.txt".to_owned(), text));
    }
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|(n, t)| (n, super::redact_secrets(&t, &secrets)))
        .collect();
    let output = args.output.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("codervpn-bugreport-{t}.tar.gz"))
    });
    super::bugreport::write_archive(&output, &files)
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "▸ wrote {} ({} files; token, header values and private keys redacted)",
        output.display(),
        files.len()
    );
    println!("{}", output.display());
    Ok(())
}
