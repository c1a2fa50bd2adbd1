//! Coder's Linux daemon behaviour for `codervpn vpn-daemon run` (issue #14): when the
//! manager's `StartRequest` carries no TUN (`tunnel_file_descriptor` 0, what Coder's Linux
//! managers send), the daemon makes its own interface (`coder0` unless `--tun-name` says
//! otherwise), applies the tunnel's addresses, routes and DNS to it itself — systemd-resolved,
//! else `/etc/resolv.conf` — and sends the manager no network settings, as Coder's daemon
//! (`vpn/tun_linux.go`) does. Everything goes on stop, on hang-up and with the process (the
//! TUN is not persistent; a `resolv.conf` left by a killed daemon is restored at the next
//! start). `-1` stays our userspace mode; any other number is a TUN the manager opened.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use codervpn_engine::host::{
    BoxFuture, Connector, LocalSettings, ManagerLink, Session, StartParams,
};
use codervpn_proto::vpn;
use tracing::info;

use crate::settings::{LinuxNetworkConfig, SharedConfig, SplitDns};

/// The interface Coder's Linux daemon makes.
pub const DEFAULT_TUN_NAME: &str = "coder0";

/// Wraps a connector: starts without a TUN fd get our own interface.
pub struct SelfManaged<C> {
    pub inner: C,
    pub tun_name: String,
}

impl<C: Connector> Connector for SelfManaged<C> {
    fn connect(
        &self,
        mut params: StartParams,
        link: ManagerLink,
    ) -> BoxFuture<Result<Box<dyn Session>, String>> {
        if params.tunnel_fd != 0 {
            return self.inner.connect(params, link);
        }
        let made = make_interface(&self.tun_name);
        let (tun, net) = match made {
            Ok(x) => x,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        params.tunnel_fd = tun.as_raw_fd();
        let apply = local_settings(net.clone());
        let connecting = self.inner.connect(params, link.with_local_settings(apply));
        Box::pin(async move {
            match connecting.await {
                Ok(inner) => Ok(Box::new(OwnInterface {
                    inner,
                    net,
                    tun: Some(tun),
                }) as Box<dyn Session>),
                Err(e) => {
                    net.teardown().await;
                    Err(e)
                }
            }
        })
    }
}

/// Creates the TUN (with offloads, as `codervpn up` does) and its settings applier.
fn make_interface(name: &str) -> Result<(OwnedFd, SharedConfig), String> {
    let (fd, actual, _) = codervpn_engine::host::create_tun(name, true)
        .map_err(|e| format!("creating TUN interface {name}: {e} (is another tunnel using it?)"))?;
    let cfg = LinuxNetworkConfig::with_split_dns(actual.clone(), SplitDns::detect())
        .map_err(|e| e.to_string())?;
    info!(interface = %actual, "created our own TUN interface (the manager sent none)");
    Ok((fd, SharedConfig::new(cfg)))
}

/// Settings applied here, never sent to the manager.
fn local_settings(net: SharedConfig) -> LocalSettings {
    Arc::new(move |req: vpn::NetworkSettingsRequest| {
        let net = net.clone();
        Box::pin(async move { net.apply(&req).await })
    })
}

/// A session on our own interface: its settings come off after the session stops, and
/// the interface goes with its descriptor.
struct OwnInterface {
    inner: Box<dyn Session>,
    net: SharedConfig,
    tun: Option<OwnedFd>,
}

impl Session for OwnInterface {
    fn peer_snapshot(&self) -> vpn::PeerUpdate {
        self.inner.peer_snapshot()
    }

    fn wake(&mut self) -> Result<(), String> {
        self.inner.wake()
    }

    fn shutdown(self: Box<Self>) -> BoxFuture<Result<(), String>> {
        Box::pin(async move {
            let me = *self;
            let result = me.inner.shutdown().await;
            me.net.teardown().await;
            drop(me.tun);
            info!("our own TUN interface removed");
            result
        })
    }
}
