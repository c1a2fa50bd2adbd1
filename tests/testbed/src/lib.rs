//! codervpn-testbed: a Coder deployment in one process, speaking the real protocols, for
//! tests, benches and `codervpn demo`.
//!
//! Serves, on one HTTP (or, with [`TestbedConfig::tls`], HTTPS) listener:
//! `/api/v2/buildinfo`, `/api/v2/users/me` and `/api/v2/workspaceagents/connection`
//! (session-token auth, 401 otherwise), `/derp` (our DERP relay, plain `Upgrade: DERP` or
//! WebSocket), `/api/v2/tailnet` (websocket → yamux → dRPC: coordination, workspace
//! updates, DERP maps, resume tokens) and `/bin/<file>` (published artifacts). Every agent
//! of the deployment is simulated ([`agent`]): WireGuard on smoltcp, reached through the
//! relay, coordinated through [`coord`]. Faults: stop/start a workspace, drop every tailnet
//! connection, restart the relay.
//!
//! A STUN server ([`TestbedConfig::stun`]) listens on UDP on the listen IP and is published
//! as a `STUNOnly` node of the embedded region, as coderd publishes its STUN addresses. With
//! [`TestbedConfig::agent_netns`] the agents run in another network namespace — another
//! host — on a thread of their own.
//!
//! With [`TestbedConfig::second_region`] a second DERP region ([`SECOND_REGION_ID`]) runs
//! too: its own relay on its own listener, its own STUN server (module `region`). Each STUN
//! server's answers can be delayed at run time ([`Testbed::set_stun_delay`]).

pub mod agent;
mod bin;
pub mod coord;
mod derp;
mod derpmap;
pub mod model;
mod netns;
mod region;
mod routes;
mod serve;
pub use serve::HEADER_READ_TIMEOUT;
mod stun;
mod tailnet;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use bytes::Bytes;
use codervpn_engine::net::derp::{DerpServer, NodePrivateKey};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::info;

pub use bin::{Artifact, Artifacts};
pub use model::{AgentSummary, Deployment, Uuid};
pub use netns::NetnsError;
pub use region::{SECOND_REGION_CODE, SECOND_REGION_ID, SECOND_REGION_NAME};
pub use routes::SeenRequest;
use routes::{RequestLog, router};

/// The version `/api/v2/buildinfo` reports unless told otherwise.
pub const DEFAULT_VERSION: &str = "v2.24.3";
/// The header that carries the session token.
pub const TOKEN_HEADER: &str = "Coder-Session-Token";
/// The embedded relay's region.
pub const EMBEDDED_REGION_ID: i64 = 999;
pub const EMBEDDED_REGION_NAME: &str = "Coder Embedded Relay";

/// How to start a testbed.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    pub listen: SocketAddr,
    pub workspaces: usize,
    pub agents_per_workspace: usize,
    pub username: String,
    pub hostname_suffix: Option<String>,
    pub version: String,
    /// Serve HTTPS with a generated CA and a leaf for `127.0.0.1`, `::1` and `localhost`
    /// ([`Testbed::ca_pem`], [`Testbed::ca_file`]); the DERP map then says `https`.
    pub tls: bool,
    /// `disable_direct_connections` in the connection info; agents then advertise no
    /// endpoints and keep every client on DERP.
    pub disable_direct_connections: bool,
    /// Agents advertise their loopback addresses as endpoints too (clients on this host).
    pub loopback_endpoints: bool,
    /// Serve STUN on UDP (the listen IP, any free port) and publish it in the DERP map.
    pub stun: bool,
    /// Run the agents in this network namespace (e.g. `/run/netns/NAME`): their sockets
    /// and interface addresses are then another host's. `None`: the testbed's own.
    pub agent_netns: Option<PathBuf>,
    /// Also run a second DERP region ([`SECOND_REGION_ID`]): a relay on a listener of its
    /// own ([`Testbed::second_region_addr`]) and, with [`Self::stun`], a STUN server of
    /// its own. Agents stay homed in the embedded region.
    pub second_region: bool,
    /// `HomeParams.RegionScore` of the served DERP map (region → latency multiplier that
    /// clients apply before choosing a home region); none when empty.
    pub region_scores: Vec<(i64, f64)>,
    /// How long an HTTP client may take to send a request head before it is dropped
    /// ([`HEADER_READ_TIMEOUT`] by default).
    pub header_read_timeout: std::time::Duration,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workspaces: 3,
            agents_per_workspace: 1,
            username: "testy".into(),
            hostname_suffix: None,
            version: DEFAULT_VERSION.into(),
            tls: false,
            disable_direct_connections: false,
            loopback_endpoints: false,
            stun: true,
            agent_netns: None,
            second_region: false,
            region_scores: Vec::new(),
            header_read_timeout: serve::HEADER_READ_TIMEOUT,
        }
    }
}

#[derive(Clone)]
struct AppState {
    deployment: watch::Receiver<Arc<Deployment>>,
    artifacts: watch::Receiver<Artifacts>,
    bodies_served: BodyCounts,
    derp: derp::DerpSlot,
    version: String,
    url: url::Url,
    tailnet: Arc<tailnet::TailnetShared>,
    /// Bumped to drop every tailnet connection (a fault).
    drop_tailnet: watch::Receiver<u64>,
    requests: RequestLog,
    disable_direct: bool,
}

/// A running testbed. Dropping it stops the server.
pub struct Testbed {
    url: url::Url,
    deployment: watch::Sender<Arc<Deployment>>,
    artifacts: watch::Sender<Artifacts>,
    bodies_served: BodyCounts,
    derp: derp::DerpSlot,
    derp_key: NodePrivateKey,
    relay_loss: Mutex<f64>,
    coordinator: coord::Coordinator,
    tailnet: Arc<tailnet::TailnetShared>,
    drop_tailnet: watch::Sender<u64>,
    requests: RequestLog,
    stop: Option<oneshot::Sender<()>>,
    tls: Option<tls::CaFiles>,
    stun: Option<stun::StunServer>,
    second: Option<region::SecondRegion>,
    /// Stops the agent fleet when it runs on this runtime.
    fleet_stop: Option<oneshot::Sender<()>>,
    /// The agents' thread when they run in another namespace.
    fleet_thread: Option<netns::NetnsThread>,
}

/// 200 answers per `/bin/` name.
type BodyCounts = Arc<Mutex<std::collections::BTreeMap<String, u64>>>;

/// Why the testbed could not start.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up HTTPS: {0}")]
    Tls(String),
    #[error("cannot serve STUN on {ip}: {source}")]
    Stun {
        ip: std::net::IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve the second DERP region on {addr}: {source}")]
    SecondRegion {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the agents: {0}")]
    AgentNetns(#[from] NetnsError),
}

impl Testbed {
    /// Binds, then serves in the background on the current tokio runtime.
    pub async fn start(config: TestbedConfig) -> Result<Self, TestbedError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| TestbedError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| TestbedError::Listen {
                addr: config.listen,
                source,
            })?;
        let (tls, server_tls) = if config.tls {
            let (files, server) = tls::CaFiles::create().map_err(TestbedError::Tls)?;
            (Some(files), Some(server))
        } else {
            (None, None)
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url =
            url::Url::parse(&format!("{scheme}://{addr}/")).map_err(|e| TestbedError::Listen {
                addr,
                source: std::io::Error::other(e.to_string()),
            })?;
        let mut deployment = Deployment::generate(
            &config.username,
            config.workspaces,
            config.agents_per_workspace,
        );
        deployment.hostname_suffix = config.hostname_suffix.clone();
        let (dep_tx, dep_rx) = watch::channel(Arc::new(deployment));
        let (art_tx, art_rx) = watch::channel(Artifacts::default());
        let bodies_served = BodyCounts::default();
        let derp_key = NodePrivateKey::generate();
        let derp = derp::DerpSlot::new(DerpServer::new(derp_key.clone()));
        let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let coordinator = coord::Coordinator::default();
        let stun = match config.stun {
            true => Some(stun::StunServer::start(addr.ip()).await.map_err(|source| {
                TestbedError::Stun {
                    ip: addr.ip(),
                    source,
                }
            })?),
            false => None,
        };
        let force_http = url.scheme() == "http";
        let mut derp_map = derpmap::build(&host, port, force_http, stun.as_ref().map(|s| s.addr()));
        let second = match config.second_region {
            true => {
                let second = region::SecondRegion::start(
                    addr.ip(),
                    server_tls.clone(),
                    config.stun,
                    config.header_read_timeout,
                )
                .await?;
                let stun = second.stun().map(|s| s.addr());
                derpmap::add_second_region(
                    &mut derp_map,
                    &host,
                    second.addr().port(),
                    force_http,
                    stun,
                );
                Some(second)
            }
            false => None,
        };
        derpmap::set_region_scores(&mut derp_map, &config.region_scores);
        let shared = Arc::new(tailnet::TailnetShared {
            deployment: dep_rx.clone(),
            derp_map,
            coordinator: coordinator.clone(),
            tokens: Default::default(),
            resumed: Default::default(),
            unavailable: Default::default(),
        });
        let (drop_tx, drop_rx) = watch::channel(0u64);
        let requests = RequestLog::default();
        let state = AppState {
            tailnet: shared.clone(),
            deployment: dep_rx.clone(),
            artifacts: art_rx,
            bodies_served: bodies_served.clone(),
            derp: derp.clone(),
            version: config.version.clone(),
            url: url.clone(),
            drop_tailnet: drop_rx,
            requests: requests.clone(),
            disable_direct: config.disable_direct_connections,
        };
        let app = router(state);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        serve::spawn(
            listener,
            server_tls,
            app,
            config.header_read_timeout,
            stop_rx,
        )
        .map_err(|source| TestbedError::Listen { addr, source })?;
        let derp_url = url.join("derp").map_err(|e| TestbedError::Listen {
            addr,
            source: std::io::Error::other(e.to_string()),
        })?;
        let agent_tls = tls.as_ref().map(|t| t.client.clone());
        let agent_net = agent::AgentNet {
            disable_direct: config.disable_direct_connections,
            loopback_endpoints: config.loopback_endpoints,
            stun: stun.as_ref().map(|s| s.addr()),
        };
        let fleet_coordinator = coordinator.clone();
        let fleet = move |stop| {
            agent::fleet(
                dep_rx,
                fleet_coordinator,
                derp_url,
                agent_tls,
                agent_net,
                stop,
            )
        };
        let (fleet_stop, fleet_thread) = match &config.agent_netns {
            Some(path) => (None, Some(netns::spawn(path, fleet).await?)),
            None => {
                let (stop_tx, stop_rx) = oneshot::channel();
                tokio::spawn(fleet(stop_rx));
                (Some(stop_tx), None)
            }
        };
        info!(
            %url,
            stun = ?stun.as_ref().map(|s| s.addr()),
            second_region = ?second.as_ref().map(|s| s.addr()),
            agent_netns = ?config.agent_netns,
            "testbed serving"
        );
        Ok(Self {
            url,
            deployment: dep_tx,
            artifacts: art_tx,
            bodies_served,
            derp,
            derp_key,
            relay_loss: Mutex::new(0.0),
            coordinator,
            tailnet: shared,
            requests,
            drop_tailnet: drop_tx,
            stop: Some(stop_tx),
            tls,
            stun,
            second,
            fleet_stop,
            fleet_thread,
        })
    }

    /// The STUN server's address (as published in the DERP map), unless STUN is off.
    pub fn stun_addr(&self) -> Option<SocketAddr> {
        self.stun.as_ref().map(|s| s.addr())
    }

    /// Binding requests the STUN server answered so far.
    pub fn stun_requests(&self) -> u64 {
        self.stun.as_ref().map_or(0, |s| {
            s.counts()
                .answered
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Datagrams the STUN server dropped unanswered (not Tailscale binding requests).
    pub fn stun_dropped(&self) -> u64 {
        self.stun.as_ref().map_or(0, |s| {
            s.counts()
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The deployment's access URL (`http://127.0.0.1:PORT/`, or `https://` with TLS).
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The CA certificate (PEM) of an HTTPS testbed.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// A file holding [`Self::ca_pem`] (for `SSL_CERT_FILE` or other processes); removed
    /// when the testbed is dropped.
    pub fn ca_file(&self) -> Option<&FsPath> {
        self.tls.as_ref().map(|t| t.ca_file.as_path())
    }

    /// A client configuration that trusts this testbed (system roots plus its CA).
    pub fn client_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.as_ref().map(|t| t.client.clone())
    }

    pub fn token(&self) -> String {
        self.deployment.borrow().token.clone()
    }

    pub fn deployment(&self) -> Arc<Deployment> {
        self.deployment.borrow().clone()
    }

    /// The relay serving `/derp` right now.
    pub fn derp(&self) -> DerpServer {
        self.derp.current()
    }

    /// Waits (up to `timeout`) until every agent of the deployment has registered with
    /// the coordinator; false if some never did.
    pub async fn agents_ready(&self, timeout: std::time::Duration) -> bool {
        let want: usize = self
            .deployment()
            .workspaces
            .iter()
            .map(|w| w.agents.len())
            .sum();
        tokio::time::timeout(timeout, async {
            while self.coordinator.agents() < want {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok()
    }

    /// The coordinator (to watch what it relays).
    pub fn coordinator(&self) -> &coord::Coordinator {
        &self.coordinator
    }

    /// Every HTTP request served so far, in arrival order (simulated agents' DERP
    /// connections included).
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resume tokens handed out so far (RefreshResumeToken calls answered).
    pub fn resume_tokens_issued(&self) -> usize {
        self.tailnet
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Tailnet connections that resumed with a valid resume token so far.
    pub fn resumed_connections(&self) -> u64 {
        self.tailnet
            .resumed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fault: while set, `/api/v2/tailnet` answers 503 (a transient failure clients retry).
    pub fn set_tailnet_unavailable(&self, unavailable: bool) {
        self.tailnet
            .unavailable
            .store(unavailable, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fault: closes every tailnet (`/api/v2/tailnet`) connection at once. Clients redial,
    /// presenting their resume tokens.
    pub fn drop_tailnet_connections(&self) {
        self.drop_tailnet.send_modify(|g| *g += 1);
    }

    /// Fault: the relay drops this fraction (0.0–1.0) of the packets it relays, at
    /// random (survives [`Self::restart_derp`]).
    pub fn set_relay_loss(&self, fraction: f64) {
        *self.relay_loss.lock().unwrap_or_else(|p| p.into_inner()) = fraction;
        self.derp.current().set_drop_fraction(fraction);
    }

    /// Fault: restarts the DERP relay: every relay connection is closed and a fresh relay
    /// with the same key takes over `/derp`.
    pub async fn restart_derp(&self) {
        let next = DerpServer::new(self.derp_key.clone());
        next.set_drop_fraction(*self.relay_loss.lock().unwrap_or_else(|p| p.into_inner()));
        let old = self.derp.replace(next);
        old.close().await;
    }

    /// Sets a workspace's status (e.g. [`model::status::STOPPED`]); with `running = false`
    /// its agents disappear, as they do when Coder stops a workspace. Clients see the change
    /// on their `WorkspaceUpdates` stream.
    pub fn set_workspace_running(&self, workspace: &str, running: bool) -> bool {
        let mut found = false;
        self.deployment.send_modify(|d| {
            let mut next = (**d).clone();
            for w in &mut next.workspaces {
                if w.name == workspace {
                    found = true;
                    if running {
                        w.status = model::status::RUNNING;
                        if w.agents.is_empty() {
                            w.agents.push(model::Agent {
                                id: Uuid::random(),
                                name: "main".into(),
                            });
                        }
                    } else {
                        w.status = model::status::STOPPED;
                        w.agents.clear();
                    }
                }
            }
            *d = Arc::new(next);
        });
        found
    }

    /// Publishes (or replaces) `/bin/<name>`.
    pub fn publish(&self, name: &str, bytes: impl Into<Bytes>) {
        let artifact = Artifact::new(bytes.into());
        self.artifacts.send_modify(|files| {
            let mut next = (**files).clone();
            next.insert(name.to_owned(), artifact);
            *files = Arc::new(next);
        });
    }

    /// How many `/bin/<name>` answers carried a body (200s; 304s and 404s do not count).
    pub fn bin_bodies_served(&self, name: &str) -> u64 {
        let counts = self.bodies_served.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(name).copied().unwrap_or(0)
    }

    /// The JSON line `codervpn testbed serve` prints.
    pub fn summary(&self) -> serde_json::Value {
        let d = self.deployment();
        let mut v = json!({
            "url": self.url.as_str().trim_end_matches('/'),
            "token": d.token,
            "agents": d.agent_summaries(),
        });
        if let Some(path) = self.ca_file() {
            v["ca_file"] = json!(path.display().to_string());
        }
        if let Some(addr) = self.stun_addr() {
            v["stun"] = json!(addr.to_string());
        }
        if let Some(addr) = self.second_region_addr() {
            v["second_region"] = json!(addr.to_string());
        }
        v
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.fleet_stop.take() {
            let _ = stop.send(());
        }
        // Stops the agents in their namespace and waits for their thread.
        self.fleet_thread.take();
    }
}
