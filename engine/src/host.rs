//! The engine's API for its hosts — the `codervpn` binary (`nebridge`) and the C API
//! (`capi`). They use only what is named here (`engine/tests/layering.rs` checks it); the
//! rest of the crate is public for the engine's own tests, the testbed, the benches and the
//! fuzzers, and may change with the engine.

pub use crate::CODER_VERSION;

// Running a tunnel: the CoderVPN tunnel role, joined to a deployment.
pub use crate::embedded;
pub use crate::session::join::{JoinOptions, TailnetConnector};
pub use crate::session::{BoxFuture, Connector, LocalSettings, ManagerLink, Session, StartParams};
pub use crate::tunnel::{TunnelExit, TunnelOptions, serve};

// A data plane on its own (`codervpn wg up`).
pub use crate::connect::{self, DataPlane, DataPlaneSpec, DeviceSpec};
#[cfg(target_os = "linux")]
pub use crate::device::linux_tun::create_tun;
pub use crate::device::userspace::forward::{self, ForwardSpec};
pub use crate::device::userspace::{StackHandle, UserspaceConfig, socks5, socks5_access};
pub use crate::net::wg::config::WgConfig;

// What a running tunnel tells about itself, and netcheck.
pub use crate::net::disco::Path;
pub use crate::net::pings::PongPath;
pub use crate::net::wg::PeerStats;
pub use crate::session::diag::{Diagnostics, EngineSnapshot};
pub use crate::session::probe::{ProbeReport, STUN_WAIT, probe};

// Reaching a deployment the way the tunnel does (downloads in compat mode, hints).
pub use crate::session::api::same_origin_redirects;
pub use crate::transport::proxy::Proxies;
pub use crate::transport::tls;

// Process plumbing for a tunnel process.
pub use crate::ffi::{ignore_sigpipe_if_default, inherited_fd};
pub use crate::logs::{ManagerLogLayer, install_subscriber};

// Noticing a system sleep (the engine does so itself; `up` for Coder's tunnel in the compat
// modes, which does not).
pub use crate::session::join::sleep::{CHECK_INTERVAL as SLEEP_CHECK_INTERVAL, SleepWatch};
