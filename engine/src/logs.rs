//! Forwards `tracing` records emitted inside a tunnel to its manager as one-way `Log`
//! messages (codervpn-protocol.md §9).
//!
//! A tunnel registers its connection handle and runs inside a span carrying the
//! `codervpn_tunnel` field; [`ManagerLogLayer`] finds that span in an event's scope and
//! queues the record on that tunnel's connection without waiting (a full queue drops the
//! record and counts it). TRACE is never sent.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use codervpn_proto::vpn::{Log, TunnelMessage, log, tunnel_message};
use codervpn_proto::{Handle, RpcError, TunnelSide};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The span field that marks a tunnel's scope.
pub const TUNNEL_FIELD: &str = "codervpn_tunnel";

static SINKS: Mutex<Option<HashMap<u64, Handle<TunnelSide>>>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Records dropped because a manager was not reading fast enough.
pub fn dropped_records() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// A tunnel's registration; unregisters on drop.
pub struct SinkGuard {
    id: u64,
}

impl SinkGuard {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        let mut sinks = SINKS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(map) = sinks.as_mut() {
            map.remove(&self.id);
        }
    }
}

/// Makes `handle` the destination of records emitted inside the span whose
/// `codervpn_tunnel` field is the returned guard's id.
pub fn register(handle: Handle<TunnelSide>) -> SinkGuard {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut sinks = SINKS.lock().unwrap_or_else(PoisonError::into_inner);
    sinks.get_or_insert_with(HashMap::new).insert(id, handle);
    SinkGuard { id }
}

fn sink(id: u64) -> Option<Handle<TunnelSide>> {
    let sinks = SINKS.lock().unwrap_or_else(PoisonError::into_inner);
    sinks.as_ref()?.get(&id).cloned()
}

/// Installs [`ManagerLogLayer`] (DEBUG and above) as the process's subscriber, plus
/// stderr output filtered by `CODERVPN_LOG` when it is set; once, and only when no
/// subscriber was installed before (a host's own stays). For the C entry points, whose
/// hosts have no `tracing` of their own.
pub fn install_subscriber() {
    use tracing_subscriber::prelude::*;
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let stderr = std::env::var("CODERVPN_LOG").ok().map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::new(filter))
        });
        let _ = tracing_subscriber::registry()
            .with(ManagerLogLayer.with_filter(tracing_subscriber::filter::LevelFilter::DEBUG))
            .with(stderr)
            .try_init();
    });
}

/// The layer to install in the process's subscriber.
#[derive(Debug, Default, Clone, Copy)]
pub struct ManagerLogLayer;

struct TunnelId(u64);

impl<S> Layer<S> for ManagerLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut finder = TunnelIdFinder(None);
        attrs.record(&mut finder);
        if let (Some(tunnel), Some(span)) = (finder.0, ctx.span(id)) {
            span.extensions_mut().insert(TunnelId(tunnel));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let Some(level) = wire_level(*meta.level()) else {
            return;
        };
        if !meta.target().starts_with("codervpn") && *meta.level() > Level::WARN {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let Some(tunnel) = scope
            .into_iter()
            .find_map(|span| span.extensions().get::<TunnelId>().map(|t| t.0))
        else {
            return;
        };
        let Some(handle) = sink(tunnel) else {
            return;
        };
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        let level = if fields.critical {
            log::Level::Critical
        } else {
            level
        };
        let record = Log {
            level: level as i32,
            message: fields.message,
            logger_names: logger_names(meta.target()),
            fields: fields.fields,
        };
        let msg = TunnelMessage {
            rpc: None,
            msg: Some(tunnel_message::Msg::Log(record)),
        };
        match handle.try_notify(msg) {
            Ok(()) | Err(RpcError::Closed(_)) => {}
            Err(RpcError::QueueFull | RpcError::Frame(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// tracing level → `Log.Level`; TRACE is not sent.
pub fn wire_level(level: Level) -> Option<log::Level> {
    match level {
        Level::TRACE => None,
        Level::DEBUG => Some(log::Level::Debug),
        Level::INFO => Some(log::Level::Info),
        Level::WARN => Some(log::Level::Warn),
        Level::ERROR => Some(log::Level::Error),
    }
}

/// `codervpn_engine::tunnel` → `["vpn", "tunnel"]`; `codervpn_proto::connection` →
/// `["vpn", "proto", "connection"]`; other crates keep their own path.
pub fn logger_names(target: &str) -> Vec<String> {
    let mut names = vec!["vpn".to_owned()];
    let mut parts = target.split("::");
    if let Some(first) = parts.next() {
        match first.strip_prefix("codervpn_") {
            Some("engine") => {}
            Some(rest) => names.push(rest.to_owned()),
            None => names.push(first.to_owned()),
        }
    }
    names.extend(parts.map(str::to_owned));
    names
}

/// Go's human formatter: plain text, quoted and escaped only when it contains whitespace
/// or characters that need escaping.
pub fn format_value(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\');
    if plain {
        s.to_owned()
    } else {
        format!("{s:?}")
    }
}

struct TunnelIdFinder(Option<u64>);

impl Visit for TunnelIdFinder {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == TUNNEL_FIELD {
            self.0 = Some(value);
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

#[derive(Default)]
struct FieldCollector {
    message: String,
    fields: Vec<log::Field>,
    critical: bool,
}

impl FieldCollector {
    fn push(&mut self, field: &Field, value: String) {
        self.fields.push(log::Field {
            name: field.name().to_owned(),
            value,
        });
    }
}

impl Visit for FieldCollector {
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "critical" {
            self.critical = value;
            return;
        }
        self.push(field, value.to_string());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
            return;
        }
        self.push(field, format_value(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        if field.name() == "message" {
            self.message = text;
            return;
        }
        self.push(field, format_value(&text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logger_names_start_with_vpn() {
        assert_eq!(logger_names("codervpn_engine::tunnel"), ["vpn", "tunnel"]);
        assert_eq!(
            logger_names("codervpn_proto::connection"),
            ["vpn", "proto", "connection"]
        );
        assert_eq!(logger_names("hyper::client"), ["vpn", "hyper", "client"]);
    }

    #[test]
    fn trace_is_never_sent_and_levels_map_numerically() {
        assert_eq!(wire_level(Level::TRACE), None);
        assert_eq!(wire_level(Level::DEBUG).map(|l| l as i32), Some(0));
        assert_eq!(wire_level(Level::INFO).map(|l| l as i32), Some(1));
        assert_eq!(wire_level(Level::WARN).map(|l| l as i32), Some(2));
        assert_eq!(wire_level(Level::ERROR).map(|l| l as i32), Some(3));
    }

    #[test]
    fn values_are_quoted_only_when_needed() {
        assert_eq!(format_value("abc"), "abc");
        assert_eq!(format_value("a b"), "\"a b\"");
        assert_eq!(format_value(""), "\"\"");
        assert_eq!(format_value("say \"hi\""), "\"say \\\"hi\\\"\"");
    }
}
