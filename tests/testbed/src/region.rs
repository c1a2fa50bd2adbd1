//! The optional second DERP region ([`crate::TestbedConfig::second_region`]): a relay of
//! its own (own server key, the same relay and `/derp` handler as the main listener) on a
//! TCP listener of its own on the listen IP, plus a STUN server of its own, published in
//! the DERP map as region [`SECOND_REGION_ID`]. Agents stay homed in the embedded region;
//! the second region is there so clients have a home region to choose.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use codervpn_engine::net::derp::{DerpServer, NodePrivateKey};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::debug;

use crate::TestbedError;
use crate::derp::{self, DerpSlot};
use crate::stun::StunServer;

/// The second region's ID in the DERP map.
pub const SECOND_REGION_ID: i64 = 1000;
pub const SECOND_REGION_NAME: &str = "Second Relay";
pub const SECOND_REGION_CODE: &str = "second";

/// A running second region; dropping it stops its listener and STUN server.
pub(crate) struct SecondRegion {
    addr: SocketAddr,
    derp: DerpSlot,
    stun: Option<StunServer>,
    stop: Option<oneshot::Sender<()>>,
}

impl SecondRegion {
    /// Binds `ip:0` (TCP, serving `/derp` — over TLS with `tls`) and, with `stun`, a STUN
    /// server on `ip:0`; serves on the current runtime.
    pub(crate) async fn start(
        ip: IpAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        stun: bool,
        header_read_timeout: std::time::Duration,
    ) -> Result<Self, TestbedError> {
        let want = SocketAddr::new(ip, 0);
        let fail = |source| TestbedError::SecondRegion { addr: want, source };
        let listener = TcpListener::bind(want).await.map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        let stun = match stun {
            true => Some(
                StunServer::start(ip)
                    .await
                    .map_err(|source| TestbedError::Stun { ip, source })?,
            ),
            false => None,
        };
        let derp = DerpSlot::new(DerpServer::new(NodePrivateKey::generate()));
        let app = Router::new()
            .route("/derp", get(derp::upgrade_slot))
            .route("/derp/latency-check", get(crate::routes::latency_check))
            .with_state(derp.clone());
        let (stop_tx, stop_rx) = oneshot::channel();
        crate::serve::spawn(listener, tls, app, header_read_timeout, stop_rx).map_err(fail)?;
        debug!(%addr, stun = ?stun.as_ref().map(|s| s.addr()), "second DERP region serving");
        Ok(Self {
            addr,
            derp,
            stun,
            stop: Some(stop_tx),
        })
    }

    /// The relay's listener (`/derp` on it).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn derp(&self) -> &DerpSlot {
        &self.derp
    }

    pub(crate) fn stun(&self) -> Option<&StunServer> {
        self.stun.as_ref()
    }
}

impl Drop for SecondRegion {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Per-region views of a testbed (the embedded region and, if configured, the second).
impl crate::Testbed {
    /// The second region's relay listener (`/derp` on it), if configured.
    pub fn second_region_addr(&self) -> Option<SocketAddr> {
        self.second.as_ref().map(SecondRegion::addr)
    }

    /// The relay of `region` right now (the embedded one or the second), if there is one.
    pub fn region_derp(&self, region: i64) -> Option<DerpServer> {
        self.derp_slot(region).map(DerpSlot::current)
    }

    /// DERP connections (plain upgrade or WebSocket) `region`'s relay has accepted so far.
    pub fn derp_connections(&self, region: i64) -> u64 {
        self.derp_slot(region).map_or(0, DerpSlot::accepted)
    }

    /// The header names (lowercase) of each request `region`'s `/derp` got so far.
    pub fn derp_request_headers(&self, region: i64) -> Vec<Vec<String>> {
        self.derp_slot(region)
            .map_or_else(Vec::new, DerpSlot::header_names)
    }

    /// The STUN server of `region` (as published in the DERP map), if it has one.
    pub fn region_stun_addr(&self, region: i64) -> Option<SocketAddr> {
        self.stun_server(region).map(StunServer::addr)
    }

    /// Binding requests `region`'s STUN server answered so far (delayed ones included,
    /// counted when received).
    pub fn region_stun_requests(&self, region: i64) -> u64 {
        self.stun_server(region).map_or(0, |s| {
            s.counts()
                .answered
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Fault: `region`'s STUN server answers each binding request received from now on
    /// only after `delay` (`Duration::ZERO`: at once again). Other requests are not held
    /// up. False if `region` has no STUN server.
    pub fn set_stun_delay(&self, region: i64, delay: std::time::Duration) -> bool {
        self.stun_server(region)
            .map(|s| s.set_delay(delay))
            .is_some()
    }

    /// The delay set by [`Self::set_stun_delay`] (`None`: no STUN server in `region`).
    pub fn stun_delay(&self, region: i64) -> Option<std::time::Duration> {
        self.stun_server(region).map(StunServer::delay)
    }

    fn derp_slot(&self, region: i64) -> Option<&DerpSlot> {
        match region {
            crate::EMBEDDED_REGION_ID => Some(&self.derp),
            SECOND_REGION_ID => self.second.as_ref().map(SecondRegion::derp),
            _ => None,
        }
    }

    fn stun_server(&self, region: i64) -> Option<&StunServer> {
        match region {
            crate::EMBEDDED_REGION_ID => self.stun.as_ref(),
            SECOND_REGION_ID => self.second.as_ref().and_then(SecondRegion::stun),
            _ => None,
        }
    }
}
