//! `codervpn up`: the product on Linux (on macOS it compiles, with a utun and
//! `/etc/resolver` files — `host.rs` — but was never run on a Mac). Joins a Coder
//! deployment with our engine (embedded, over the CoderVPN protocol), on a TUN interface
//! whose addresses, routes and split DNS it applies from the tunnel's network settings — or
//! in userspace mode behind a SOCKS5 proxy — publishes status on a local socket, and
//! removes everything on Ctrl-C.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use codervpn_engine::host::{JoinOptions, TailnetConnector};
use codervpn_nebridge::compat::launch::CompatHost;
use codervpn_nebridge::compat::{self, ArtifactKind, CompatConfig};
use codervpn_nebridge::diag::UpDiag;
use codervpn_nebridge::diag::cli::DeploymentArgs;
use codervpn_nebridge::diag::http as diag_http;
use codervpn_nebridge::diag::logring::LogRing;
use codervpn_nebridge::embedded;
use codervpn_nebridge::settings::SharedConfig;
use codervpn_nebridge::status::{StatusPublisher, StatusServer, TunnelState};
use codervpn_nebridge::wake::{WakeReason, WakeWatch};
use codervpn_proto::vpn;
use tracing::{info, warn};

mod host;
mod report;
use report::{FIRST_UPDATE_WAIT, describe, forward_tunnel_log, on_update, proxy_note, reachable};

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    deployment: DeploymentArgs,
    /// How the tunnel runs: our engine in-process (embedded), or Coder's compat paths.
    #[arg(long, value_enum, default_value_t = Mode::Embedded)]
    mode: Mode,
    /// Use a TUN interface (needs root; the default when running as root).
    #[arg(long, conflicts_with = "userspace")]
    tun: bool,
    /// No TUN, no root: a userspace stack reached through --socks5.
    #[arg(long)]
    userspace: bool,
    /// With --userspace: serve SOCKS5 here (workspace names resolve).
    #[arg(long, default_value = "127.0.0.1:1080")]
    socks5: SocketAddr,
    #[command(flatten)]
    socks5_access: crate::socks5_opts::Socks5Access,
    /// How workspace names reach the system resolver: `auto` (systemd-resolved when it
    /// runs, else a `resolvconf(8)` record when resolvconf generates /etc/resolv.conf, else
    /// /etc/resolv.conf itself when it is a plain file, restored on exit), or one of them
    /// by name, or `none`.
    #[arg(long, value_enum, default_value_t = DnsMode::Auto)]
    dns: DnsMode,
    /// Name of the TUN interface.
    /// (macOS: the kernel names the utun; leave it out.)
    #[arg(long, default_value = DEFAULT_INTERFACE)]
    interface: String,
    /// Where to publish status (`codervpn status` reads it); "none" to not publish.
    #[arg(long, default_value = codervpn_nebridge::status::DEFAULT_SOCKET)]
    status_socket: String,
    /// Accept a plain http:// URL that is not on a loopback address.
    #[arg(long)]
    allow_http: bool,
    /// Compat modes: a pinned minisign public key (base64, or a minisign.pub file's
    /// path) the downloaded artifact's signature must verify against (repeatable).
    #[arg(long = "compat-key", value_name = "KEY|FILE")]
    compat_keys: Vec<String>,
    /// Compat modes: where verified artifacts are cached (a private directory).
    #[arg(long, default_value = "/var/cache/codervpn")]
    cache_dir: PathBuf,
    /// Compat modes: refuse artifacts larger than this many MiB.
    #[arg(long, default_value_t = 64)]
    compat_max_mib: u64,
    /// Compat modes, development only: load an artifact without a signature check.
    #[arg(long)]
    insecure_skip_verify: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; they name
    /// your workspaces, so keep it on loopback).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

/// The TUN interface's name unless `--interface` says otherwise.
pub const DEFAULT_INTERFACE: &str = "codervpn0";

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DnsMode {
    Auto,
    Resolved,
    ResolvConf,
    Resolvconf,
    None,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Embedded,
    CompatDylib,
    CompatDaemon,
}

/// Whether `url` may be used as given: https always, http only on loopback or when
/// explicitly allowed.
pub fn check_url(url: &url::Url, allow_http: bool) -> anyhow::Result<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(a)) => a.is_loopback(),
                Some(url::Host::Ipv6(a)) => a.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if loopback || allow_http {
                Ok(())
            } else {
                bail!(
                    "{url} is plain http: the session token would cross the network unencrypted; use https, or pass --allow-http if you really mean it"
                )
            }
        }
        other => bail!("{url}: unsupported scheme {other:?} (want https)"),
    }
}

fn parse_headers(raw: &[String]) -> anyhow::Result<Vec<vpn::start_request::Header>> {
    Ok(codervpn_nebridge::diag::cli::headers(raw)?
        .into_iter()
        .map(|(name, value)| vpn::start_request::Header { name, value })
        .collect())
}

pub fn run(args: UpArgs, logs: Option<LogRing>) -> anyhow::Result<()> {
    check_url(&args.deployment.url, args.allow_http)?;
    if args.mode != Mode::Embedded && args.compat_keys.is_empty() && !args.insecure_skip_verify {
        bail!(
            "compat modes load code from the server: pin its signing key with --compat-key (or, for development only, --insecure-skip-verify)"
        );
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let use_tun = args.tun || (!args.userspace && root);
    if use_tun && !root {
        bail!("--tun needs root (or CAP_NET_ADMIN); run with sudo, or use --userspace");
    }
    let headers = parse_headers(&args.deployment.headers)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(up(args, headers, use_tun, logs))
}

async fn up(
    args: UpArgs,
    headers: Vec<vpn::start_request::Header>,
    use_tun: bool,
    logs: Option<LogRing>,
) -> anyhow::Result<()> {
    let stop_signal = crate::daemon::terminate_signal()?;
    let tun = if use_tun {
        // Our engine reads the descriptor's flags and takes TCP super packets (TSO) from
        // it; a compat tunnel gets the bare packets every CoderVPN tunnel expects.
        let offload = args.mode == Mode::Embedded;
        let (fd, name) = host::open_tun(&args.interface, offload)?;
        eprintln!("▸ created TUN interface {name}");
        Some((fd, name))
    } else {
        None
    };
    let net = match &tun {
        Some((_, name)) => Some(host::host_network(name, args.dns)?),
        None => None,
    };
    let mut publisher = StatusPublisher::new();
    let connector = TailnetConnector::new(JoinOptions {
        socks5: (!use_tun).then_some(args.socks5),
        socks5_access: args.socks5_access.access(args.socks5)?,
        ..Default::default()
    });
    let applied = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut secrets = vec![args.deployment.token.clone()];
    secrets.extend(headers.iter().map(|h| h.value.clone()));
    let diag = Arc::new(UpDiag {
        engine: (args.mode == Mode::Embedded).then(|| connector.diagnostics()),
        status: publisher.subscribe(),
        logs,
        settings: applied.clone(),
        secrets,
        mode: match args.mode {
            Mode::Embedded => "embedded",
            Mode::CompatDaemon => "compat-daemon",
            Mode::CompatDylib => "compat-dylib",
        }
        .to_owned(),
        deployment: Some((
            args.deployment.url.clone(),
            args.deployment.token.clone(),
            headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        )),
    });
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}"))?;
            if !addr.ip().is_loopback() {
                warn!(%addr, "metrics are served beyond loopback; they name your workspaces");
            }
            eprintln!("▸ metrics at http://{addr}/metrics");
            Some(tokio::spawn(diag_http::serve(listener, diag.clone())))
        }
        None => None,
    };
    let status = match args.status_socket.as_str() {
        "none" => None,
        path => {
            let path = PathBuf::from(path);
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match StatusServer::bind(&path, None) {
                Ok(s) => Some(tokio::spawn(
                    s.serve(publisher.subscribe(), Some(diag.clone().handler())),
                )),
                Err(e) => {
                    warn!(error = %e, "status socket not published");
                    None
                }
            }
        }
    };
    publisher.set_state(TunnelState::Starting, SystemTime::now());

    // Settings arrive while `start` is pending; each is merged into the current settings
    // and applied as a diff (manager-behaviour.md §5).
    let applier = net.clone();
    let on_settings: embedded::SettingsHandler = Box::new(move |s| {
        describe(s);
        applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(codervpn_nebridge::settings::describe(s));
        let req = s.clone();
        let applier = applier.clone();
        Box::pin(async move {
            match applier {
                Some(n) => n.apply(&req).await,
                None => Ok(()),
            }
        })
    });
    let (mut tunnel, host) = launch(
        &args,
        connector,
        on_settings,
        tun.as_ref().map(|(fd, _)| fd.as_raw_fd()),
    )
    .await?;
    eprintln!(
        "▸ connecting to {}{}",
        args.deployment.url,
        proxy_note(&args.deployment.url)
    );
    let req = vpn::StartRequest {
        tunnel_file_descriptor: tun.as_ref().map_or(-1, |(fd, _)| fd.as_raw_fd()),
        coder_url: args.deployment.url.to_string(),
        api_token: args.deployment.token.clone(),
        headers,
        ..Default::default()
    };
    // Ctrl-C while connecting (a start can take up to a minute against a deployment that
    // does not answer) gives up at once: the tunnel is dropped, settings removed.
    tokio::pin!(stop_signal);
    let started = tokio::select! {
        r = tunnel.client.start(req) => r.context("the tunnel stopped answering")?,
        () = &mut stop_signal => {
            publisher.set_state(
                TunnelState::Failed("interrupted while connecting".into()),
                SystemTime::now(),
            );
            cleanup(&net).await;
            hang_up(tunnel, host).await;
            eprintln!("▸ interrupted while connecting; nothing left configured");
            return Ok(());
        }
    };
    if !started.success {
        publisher.set_state(
            TunnelState::Failed(started.error_message.clone()),
            SystemTime::now(),
        );
        cleanup(&net).await;
        // A compat daemon whose start failed is stopped too (Coder's keeps running until
        // it is signalled, even after we hang up).
        hang_up(tunnel, host).await;
        bail!("{}", started.error_message);
    }
    publisher.set_state(TunnelState::Started, SystemTime::now());
    // Names resolve once the first workspace list is in (the in-tunnel resolver's zone is
    // filled before that update is sent): wait for it, briefly, so that "connected" means
    // `ssh <agent>.<workspace>.me.coder` works. A deployment with no workspaces sends none.
    let mut announced = std::collections::HashSet::new();
    let first = tokio::select! {
        r = tokio::time::timeout(FIRST_UPDATE_WAIT, tunnel.updates.recv()) => Some(r),
        () = &mut stop_signal => None,
    };
    let interrupted = first.is_none();
    if let Some(first) = first {
        eprintln!("▸ connected; Ctrl-C to disconnect");
        match first {
            Ok(Some(u)) => {
                eprintln!("  {}", reachable(&u));
                on_update(&u, &mut announced, &mut publisher);
            }
            Ok(None) => {}
            Err(_) => eprintln!("  no workspace listed yet"),
        }
        if !use_tun {
            eprintln!(
                "  userspace mode: curl --socks5-hostname {} http://<agent>.<workspace>.me.coder/",
                args.socks5
            );
        }
    }
    // Our engine notices a suspend itself; Coder's tunnel (compat modes) is told by us.
    let mut wakes =
        WakeWatch::new(args.mode != Mode::Embedded).context("watching for wake-ups (SIGUSR1)")?;
    // (A stop signal that interrupted the wait has completed: it is not polled again.)
    if !interrupted {
        loop {
            tokio::select! {
                () = &mut stop_signal => break,
                why = wakes.next() => wake(&tunnel.client, why).await,
                u = tunnel.updates.recv() => match u {
                    Some(u) => on_update(&u, &mut announced, &mut publisher),
                    None => {
                        warn!("the tunnel ended");
                        break;
                    }
                },
            }
        }
    }
    eprintln!("▸ disconnecting");
    publisher.set_state(TunnelState::Stopping, SystemTime::now());
    match tokio::time::timeout(Duration::from_secs(5), tunnel.client.stop()).await {
        Ok(Ok(r)) if r.success => {}
        other => {
            warn!(result = ?other.map(|r| r.map(|s| s.error_message)), "the tunnel did not confirm the stop")
        }
    }
    cleanup(&net).await;
    drop(tun);
    hang_up(tunnel, host).await;
    if let Some(s) = status {
        s.abort();
    }
    if let Some(m) = metrics {
        m.abort();
    }
    publisher.set_state(TunnelState::Stopped, SystemTime::now());
    eprintln!("▸ disconnected; interface, addresses, routes and DNS removed");
    Ok(())
}

/// Hangs up on the tunnel, then waits for a compat daemon to exit, SIGTERMs and at last
/// kills it ([`CompatHost::finish`]); ours exits on the hang-up, Coder's on the signal.
async fn hang_up(tunnel: embedded::Managed, host: Option<CompatHost>) {
    drop(tunnel);
    if let Some(h) = host {
        tokio::task::spawn_blocking(move || h.finish(Duration::from_secs(5)))
            .await
            .ok();
    }
}

/// Tells the tunnel the system woke (rebind, re-STUN, re-probe direct paths).
async fn wake(client: &codervpn_proto::manager::ManagerClient, why: WakeReason) {
    match why {
        WakeReason::Slept(d) => info!(
            slept_secs = d.as_secs(),
            "the system slept; waking the tunnel"
        ),
        WakeReason::Signal => info!("SIGUSR1: waking the tunnel"),
    }
    match tokio::time::timeout(Duration::from_secs(5), client.wake()).await {
        Ok(Ok(vpn::WakeResponse {})) => {
            info!("tunnel woke: UDP rebound, direct paths re-probed")
        }
        Ok(Err(e)) => warn!(error = %e, "wake not delivered"),
        Err(_) => warn!("the tunnel did not answer the wake within 5 s"),
    }
}

/// The tunnel for `--mode`: our engine in-process, or a downloaded and verified artifact.
async fn launch(
    args: &UpArgs,
    connector: TailnetConnector,
    on_settings: embedded::SettingsHandler,
    tun_fd: Option<std::os::fd::RawFd>,
) -> anyhow::Result<(embedded::Managed, Option<CompatHost>)> {
    if args.mode == Mode::Embedded {
        let e = embedded::start(connector, on_settings).await?;
        return Ok((
            embedded::Managed {
                client: e.client,
                updates: e.updates,
            },
            None,
        ));
    }
    let loopback = check_url(&args.deployment.url, false).is_ok();
    let keys = args
        .compat_keys
        .iter()
        .map(|k| match std::path::Path::new(k).is_file() {
            true => std::fs::read_to_string(k).with_context(|| format!("reading --compat-key {k}")),
            false => Ok(k.clone()),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut cfg = CompatConfig::new(args.deployment.url.clone(), args.cache_dir.clone(), keys);
    cfg.allow_http = args.deployment.url.scheme() == "http" && (loopback || args.allow_http);
    cfg.session_token = Some(args.deployment.token.clone());
    cfg.headers = parse_headers(&args.deployment.headers)?
        .into_iter()
        .map(|h| (h.name, h.value))
        .collect();
    cfg.insecure_skip_verify = args.insecure_skip_verify;
    cfg.max_bytes = args.compat_max_mib << 20;
    let kind = match args.mode {
        Mode::CompatDylib => ArtifactKind::Library,
        _ => ArtifactKind::Daemon,
    };
    eprintln!(
        "▸ downloading the {} from {}",
        kind.describe(),
        args.deployment.url
    );
    let mut last = 0u64;
    let mut progress = |p: compat::Progress| {
        if p.bytes >= last + (4 << 20) || Some(p.bytes) == p.total {
            last = p.bytes;
            match p.total {
                Some(t) => eprintln!(
                    "  {:.1} / {:.1} MiB",
                    p.bytes as f64 / 1048576.0,
                    t as f64 / 1048576.0
                ),
                None => eprintln!("  {:.1} MiB", p.bytes as f64 / 1048576.0),
            }
        }
    };
    let artifact = compat::fetch_verified(&cfg, kind, &mut progress).await?;
    eprintln!(
        "▸ verified {} (server {}, signature {}{})",
        artifact.file,
        artifact.server_version.raw,
        if artifact.signature_checked {
            "ok"
        } else {
            "NOT CHECKED"
        },
        if artifact.from_cache {
            ", from cache"
        } else {
            ""
        }
    );
    let timeout = compat::DEFAULT_HANDSHAKE_TIMEOUT;
    let (conn, host) = match args.mode {
        Mode::CompatDylib => compat::launch::open_library(&artifact, timeout).await?,
        _ => {
            let envs = match tun_fd {
                Some(_) => Vec::new(),
                None => vec![("CODERVPN_SOCKS5".to_owned(), args.socks5.to_string())],
            };
            compat::launch::spawn_daemon(
                &artifact,
                &tun_fd.into_iter().collect::<Vec<_>>(),
                &envs,
                timeout,
            )
            .await?
        }
    };
    let handlers = embedded::Handlers {
        on_settings,
        on_log: Some(Box::new(forward_tunnel_log)),
    };
    Ok((embedded::drive_with(conn, handlers), Some(host)))
}

async fn cleanup(net: &Option<SharedConfig>) {
    if let Some(n) = net {
        n.teardown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_accepted_only_on_loopback_or_when_allowed() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert!(check_url(&u("https://coder.example.com"), false).is_ok());
        assert!(check_url(&u("http://127.0.0.1:3000"), false).is_ok());
        assert!(check_url(&u("http://[::1]:3000"), false).is_ok());
        assert!(check_url(&u("http://localhost:3000"), false).is_ok());
        let err = check_url(&u("http://coder.example.com"), false).unwrap_err();
        assert!(err.to_string().contains("--allow-http"), "{err}");
        assert!(check_url(&u("http://coder.example.com"), true).is_ok());
        assert!(check_url(&u("ftp://coder.example.com"), true).is_err());
    }

    #[test]
    fn headers_are_name_equals_value() {
        let h = parse_headers(&["X-A=1=2".into()]).unwrap();
        assert_eq!((h[0].name.as_str(), h[0].value.as_str()), ("X-A", "1=2"));
        assert!(parse_headers(&["nope".into()]).is_err());
    }
}
