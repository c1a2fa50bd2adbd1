//! `codervpn demo`: the whole product on one machine, no root, no flags. Starts the
//! built-in testbed (a Coder deployment with simulated agents), runs our engine embedded
//! in userspace mode through the CoderVPN protocol, shows the workspaces it reports, and
//! fetches an agent's web page by its DNS name through the tunnel.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use codervpn_engine::host::StackHandle;
use codervpn_engine::host::{JoinOptions, TailnetConnector};
use codervpn_proto::vpn;
use codervpn_testbed::agent::{ECHO_PORT, HTTP_PORT};
use codervpn_testbed::{EMBEDDED_REGION_NAME, Testbed, TestbedConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use codervpn_nebridge::embedded;

/// How long the demo waits for each step.
const STEP: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Exit 0 once an agent's page was fetched by name through the tunnel (non-zero with
    /// the reason otherwise) instead of showing the live table until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Number of workspaces in the testbed.
    #[arg(long, default_value_t = 3)]
    workspaces: usize,
    /// Serve a SOCKS5 proxy into the tunnel here (workspace names resolve), so other
    /// programs can use the demo tunnel (default: a free loopback port).
    #[arg(long)]
    socks5: Option<SocketAddr>,
}

/// One agent as the demo shows it.
struct Row {
    workspace: String,
    agent: String,
    fqdn: String,
    ip: String,
    handshake: Option<SystemTime>,
    latency: Option<Duration>,
    /// The last status update said the path is direct (`last_ping.did_p2p`).
    direct: bool,
}

fn step(text: &str) {
    eprintln!("▸ {text}");
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let stop_signal = crate::daemon::terminate_signal()?;
    step(&format!(
        "starting the testbed: a Coder deployment with {} workspaces",
        args.workspaces
    ));
    let tb = Testbed::start(TestbedConfig {
        workspaces: args.workspaces,
        ..Default::default()
    })
    .await?;
    eprintln!("  {} (token {}…)", tb.url(), &tb.token()[..12]);
    let socks5 = match args.socks5 {
        Some(a) => a,
        None => free_loopback_port()?,
    };
    step("starting the tunnel: our engine, embedded, userspace mode, over the CoderVPN protocol");
    let connector = TailnetConnector::new(JoinOptions {
        socks5: Some(socks5),
        ..Default::default()
    });
    let mut tunnel = embedded::start(
        connector.clone(),
        Box::new(|s| {
            describe_settings(s);
            Box::pin(async { Ok(()) })
        }),
    )
    .await?;
    let started = Instant::now();
    let req = vpn::StartRequest {
        tunnel_file_descriptor: -1,
        coder_url: tb.url().to_string(),
        api_token: tb.token(),
        ..Default::default()
    };
    let r = tokio::time::timeout(STEP, tunnel.client.start(req))
        .await
        .context("start timed out")??;
    if !r.success {
        bail!("the tunnel did not start: {}", r.error_message);
    }
    let first = tokio::time::timeout(STEP, tunnel.updates.recv())
        .await
        .context("no PeerUpdate from the tunnel")?
        .context("the tunnel went away")?;
    eprintln!(
        "  joined in {} ms; first PeerUpdate: {} workspaces, {} agents",
        started.elapsed().as_millis(),
        first.upserted_workspaces.len(),
        first.upserted_agents.len()
    );
    let mut rows = BTreeMap::new();
    apply(&mut rows, &first);
    let stack = connector
        .stack()
        .context("the tunnel has no userspace stack")?;

    step(
        "reaching each agent through the tunnel (WireGuard via DERP, then direct UDP where it works)",
    );
    probe(&stack, &mut rows).await;
    // The tunnel reports handshakes in its 5-second status update.
    let _ = tokio::time::timeout(Duration::from_secs(6), async {
        while rows.values().any(|r| r.handshake.is_none()) {
            match tunnel.updates.recv().await {
                Some(u) => apply(&mut rows, &u),
                None => break,
            }
        }
    })
    .await;
    probe(&stack, &mut rows).await;
    print_table(&rows, false);

    let target = rows
        .values()
        .next()
        .context("the testbed reported no agents")?;
    let name = target.fqdn.trim_end_matches('.').to_owned();
    step(&format!("fetching http://{name}/ through the tunnel"));
    let ip = connector
        .resolve(&name)
        .with_context(|| format!("{name} does not resolve in the tunnel's zone"))?;
    eprintln!("  {name} → {ip} (answered by the in-tunnel resolver's zone)");
    let page = fetch(&stack, ip).await?;
    let (head, body) = page.split_once("\r\n\r\n").unwrap_or((&page, ""));
    eprintln!("  {}", head.lines().next().unwrap_or(""));
    println!("{body}");
    if args.once {
        let _ = tunnel.client.stop().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), tunnel.tunnel).await;
        return Ok(());
    }
    eprintln!("  try it yourself: curl --socks5-hostname {socks5} http://{name}/");
    eprintln!("  (Ctrl-C to stop)");
    let live = std::io::stdout().is_terminal();
    tokio::pin!(stop_signal);
    loop {
        tokio::select! {
            () = &mut stop_signal => break,
            u = tunnel.updates.recv() => match u {
                Some(u) => apply(&mut rows, &u),
                None => bail!("the tunnel went away"),
            },
            () = tokio::time::sleep(Duration::from_secs(5)) => {
                probe(&stack, &mut rows).await;
                print_table(&rows, live);
            }
        }
    }
    step("stopping the tunnel");
    let r = tokio::time::timeout(Duration::from_secs(5), tunnel.client.stop()).await;
    if !matches!(r, Ok(Ok(ref s)) if s.success) {
        eprintln!("  the tunnel did not confirm the stop: {r:?}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), tunnel.tunnel).await;
    Ok(())
}

fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?)
}

fn describe_settings(s: &vpn::NetworkSettingsRequest) {
    for line in codervpn_nebridge::settings::describe(s) {
        eprintln!("  {line}");
    }
}

fn apply(rows: &mut BTreeMap<Vec<u8>, Row>, u: &vpn::PeerUpdate) {
    let names: BTreeMap<&[u8], &str> = u
        .upserted_workspaces
        .iter()
        .map(|w| (w.id.as_slice(), w.name.as_str()))
        .collect();
    for a in &u.deleted_agents {
        rows.remove(&a.id);
    }
    for a in &u.upserted_agents {
        let handshake = a
            .last_handshake
            .as_ref()
            .and_then(|t| u64::try_from(t.seconds).ok())
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let row = rows.entry(a.id.clone()).or_insert_with(|| Row {
            workspace: String::new(),
            agent: a.name.clone(),
            fqdn: a
                .fqdn
                .iter()
                .rev()
                .find(|f| f.contains(".me."))
                .or(a.fqdn.first())
                .cloned()
                .unwrap_or_default(),
            ip: a.ip_addrs.first().cloned().unwrap_or_default(),
            handshake: None,
            latency: None,
            direct: false,
        });
        if let Some(w) = names.get(a.workspace_id.as_slice()) {
            row.workspace = (*w).to_owned();
        }
        row.handshake = handshake.or(row.handshake);
        row.direct = a.last_ping.as_ref().is_some_and(|p| p.did_p2p);
    }
}

async fn probe(stack: &StackHandle, rows: &mut BTreeMap<Vec<u8>, Row>) {
    for row in rows.values_mut() {
        let Ok(ip) = row.ip.parse::<IpAddr>() else {
            continue;
        };
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            stack.connect((ip, ECHO_PORT).into()),
        )
        .await;
        row.latency = matches!(r, Ok(Ok(_))).then(|| t.elapsed());
    }
}

/// Coder Desktop's dot: connecting until a handshake, then by latency.
fn status(row: &Row) -> &'static str {
    match (row.handshake, row.latency) {
        (None, _) | (_, None) => "connecting",
        (Some(_), Some(l)) if l < Duration::from_millis(150) => "green",
        _ => "yellow",
    }
}

fn print_table(rows: &BTreeMap<Vec<u8>, Row>, redraw: bool) {
    if redraw {
        print!("\x1b[2J\x1b[H");
    }
    println!(
        "{:<10} {:<8} {:<11} {:<26} {:<40} {:>9}  PATH",
        "WORKSPACE", "AGENT", "STATUS", "DNS NAME", "ADDRESS", "LATENCY"
    );
    for r in rows.values() {
        let latency = r.latency.map_or("-".to_owned(), |l| {
            format!("{:.1} ms", l.as_secs_f64() * 1000.0)
        });
        let path = if r.direct {
            "direct (UDP)".to_owned()
        } else {
            format!("DERP ({EMBEDDED_REGION_NAME})")
        };
        println!(
            "{:<10} {:<8} {:<11} {:<26} {:<40} {:>9}  {path}",
            r.workspace,
            r.agent,
            status(r),
            r.fqdn,
            r.ip,
            latency
        );
    }
}

async fn fetch(stack: &StackHandle, ip: IpAddr) -> anyhow::Result<String> {
    let attempt = async {
        let mut s = stack.connect((ip, HTTP_PORT).into()).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: codervpn-demo\r\nConnection: close\r\n\r\n")
            .await?;
        let mut page = String::new();
        s.read_to_string(&mut page).await?;
        anyhow::Ok(page)
    };
    let page = tokio::time::timeout(STEP, attempt)
        .await
        .context("the agent's page did not arrive in time")??;
    if !page.starts_with("HTTP/1.1 200") {
        bail!("the agent answered: {}", page.lines().next().unwrap_or(""));
    }
    Ok(page)
}
