//! What a running session lets its host look at (issue #19): the data plane's counters and
//! paths, the control plane's state, the last STUN report, and pings on demand. The host
//! (`codervpn up`) turns these into `status --json`, `ping`, metrics and bug reports.
//!
//! A [`Diagnostics`] handle is taken from the connector before the session starts and
//! reaches whichever session runs now; every call fails with
//! [`PingError::NotRunning`] while none does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::{mpsc, oneshot, watch};

use super::join::controller::ControlStatus;
use crate::net::derp::NodePrivateKey;
use crate::net::disco::DiscoPrivateKey;
use crate::net::pings::{PingError, PingReply};
use crate::net::runner::{NetReport, WgCommand, WgStats};

/// The session's inside, as its diagnostics see it.
#[derive(Clone)]
pub(crate) struct Tap {
    pub wg: mpsc::Sender<WgCommand>,
    pub control: watch::Receiver<ControlStatus>,
    pub net: watch::Receiver<NetReport>,
    /// DERP region names by id, from the map at join.
    pub regions: BTreeMap<i64, String>,
    /// The region latencies measured at join (HTTPS), lowest first.
    pub derp_latency: Vec<(i64, Duration)>,
    /// The deployment disables direct connections.
    pub direct_disabled: bool,
    /// The session's private keys: only to redact them from text.
    pub keys: (NodePrivateKey, DiscoPrivateKey),
}

/// Everything a snapshot holds.
#[derive(Debug, Clone)]
pub struct EngineSnapshot {
    pub wg: WgStats,
    pub control: ControlStatus,
    pub net: NetReport,
    pub regions: BTreeMap<i64, String>,
    pub derp_latency: Vec<(i64, Duration)>,
    pub direct_disabled: bool,
}

/// A handle on the running session's diagnostics. Cheap to clone.
#[derive(Clone, Default)]
pub struct Diagnostics {
    tap: Arc<Mutex<Option<Tap>>>,
}

impl std::fmt::Debug for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diagnostics")
            .field("running", &self.current().is_some())
            .finish()
    }
}

impl Diagnostics {
    pub(crate) fn set(&self, tap: Option<Tap>) {
        *self.tap.lock().unwrap_or_else(|p| p.into_inner()) = tap;
    }

    fn current(&self) -> Option<Tap> {
        self.tap.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The data plane's counters and paths, the control plane and the last STUN report.
    pub async fn snapshot(&self) -> Result<EngineSnapshot, PingError> {
        let tap = self.current().ok_or(PingError::NotRunning)?;
        let (tx, rx) = oneshot::channel();
        tap.wg
            .send(WgCommand::Stats(tx))
            .await
            .map_err(|_| PingError::NotRunning)?;
        let wg = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .map_err(|_| PingError::Timeout(Duration::from_secs(5)))?
            .map_err(|_| PingError::NotRunning)?;
        Ok(EngineSnapshot {
            wg,
            control: tap.control.borrow().clone(),
            net: tap.net.borrow().clone(),
            regions: tap.regions.clone(),
            derp_latency: tap.derp_latency.clone(),
            direct_disabled: tap.direct_disabled,
        })
    }

    /// A disco ping to the peer holding `addr`, along the path its packets take now.
    pub async fn ping(&self, addr: IpAddr, timeout: Duration) -> Result<PingReply, PingError> {
        let tap = self.current().ok_or(PingError::NotRunning)?;
        let (reply, rx) = oneshot::channel();
        tap.wg
            .send(WgCommand::Ping { addr, reply })
            .await
            .map_err(|_| PingError::NotRunning)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(PingError::NotRunning),
            Err(_) => Err(PingError::Timeout(timeout)),
        }
    }

    /// The name of DERP region `id` in the running session's map.
    pub fn region_name(&self, id: i64) -> Option<String> {
        self.current()?.regions.get(&id).cloned()
    }

    /// `text` with the session's private keys (hex, base64) replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        let Some(tap) = self.current() else {
            return text.to_owned();
        };
        let mut out = text.to_owned();
        for key in [tap.keys.0.to_bytes(), tap.keys.1.to_bytes()] {
            for form in key_forms(&key) {
                out = out.replace(&form, "[redacted]");
            }
        }
        out
    }
}

/// The ways a key may be written: hex (both cases), base64 (standard and URL-safe, padded or
/// not).
fn key_forms(key: &[u8; 32]) -> Vec<String> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let url = base64::engine::general_purpose::URL_SAFE.encode(key);
    vec![
        hex.to_uppercase(),
        hex,
        b64.trim_end_matches('=').to_owned(),
        url.trim_end_matches('=').to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_every_written_form_of_the_keys() {
        let d = Diagnostics::default();
        let node = NodePrivateKey::from_bytes([0xfb; 32]);
        let disco = DiscoPrivateKey::from_bytes([0x3e; 32]);
        let (wg, _) = mpsc::channel(1);
        let (_c, control) = watch::channel(ControlStatus::default());
        let (_n, net) = watch::channel(NetReport::default());
        let text = format!(
            "a {} b {} c {} d {}",
            "fb".repeat(32),
            base64::engine::general_purpose::STANDARD.encode([0x3e; 32]),
            base64::engine::general_purpose::URL_SAFE.encode([0xfb; 32]),
            "FB".repeat(32),
        );
        assert_eq!(d.redact(&text), text, "no session: nothing known to redact");
        d.set(Some(Tap {
            wg,
            control,
            net,
            regions: BTreeMap::new(),
            derp_latency: Vec::new(),
            direct_disabled: false,
            keys: (node, disco),
        }));
        let r = d.redact(&text);
        assert!(
            !r.contains(&"fb".repeat(32)) && !r.contains(&"FB".repeat(32)),
            "{r}"
        );
        assert!(!r.contains("Pj4+Pj4"), "{r}");
        assert!(!r.contains("-_v7"), "{r}");
        assert_eq!(r.matches("[redacted]").count(), 4, "{r}");
    }
}
