//! The Coder REST calls a tunnel makes (tailnet.md §3): `users/me` and
//! `workspaceagents/connection`, with the session token and the StartRequest headers on
//! every request. Errors say what failed and where.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use codervpn_proto::tailnet::{DerpMap, derp_map};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use url::Url;

/// Header carrying the session token.
pub const TOKEN_HEADER: &str = "Coder-Session-Token";
/// Most bytes of an error body quoted in messages.
const MAX_BODY: usize = 512;
/// Most bytes of a REST answer read (a DERP map of many regions is far below this).
pub const MAX_RESPONSE: usize = 8 << 20;
/// Most redirects followed (within the origin).
const MAX_REDIRECTS: usize = 5;

/// A REST call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the session token was rejected by {url} (HTTP 401: {body})")]
    Unauthorized { url: String, body: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("cannot reach {host} for {url}: {reason}")]
    Unreachable {
        host: String,
        url: String,
        reason: String,
    },
    #[error("{url} sent a response that is not what a Coder server sends: {reason}")]
    BadResponse { url: String, reason: String },
    #[error(
        "{url} redirected to {location}, another origin; not followed, so that the session token stays with {origin}"
    )]
    CrossOriginRedirect {
        url: String,
        location: String,
        origin: String,
    },
    #[error("{url} sent more than {limit} bytes; refusing the answer")]
    TooLarge { url: String, limit: usize },
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

/// Redirects are followed only within the origin of the first URL (at most 5): the
/// session token and the user's headers, sent with every request, never reach another
/// host, scheme or port — https → http included. (Go's client forwards custom headers such
/// as `Coder-Session-Token` across origins; ours stops instead, and says so.)
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if !same_origin {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("more than 5 redirects")
        } else {
            attempt.follow()
        }
    })
}

/// The body, or an error once it passes [`MAX_RESPONSE`] bytes.
async fn read_capped(mut resp: reqwest::Response, url: &Url) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        let chunk = resp.chunk().await.map_err(|e| ApiError::Unreachable {
            host: host_of(url),
            url: url.to_string(),
            reason: chain(&e),
        })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(ApiError::TooLarge {
                url: url.to_string(),
                limit: MAX_RESPONSE,
            });
        }
        body.extend_from_slice(&chunk);
    }
}

/// `GET /api/v2/users/me`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub id: [u8; 16],
    pub username: String,
}

/// `GET /api/v2/workspaceagents/connection`, with the DERP map already rewritten.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionInfo {
    pub derp_map: DerpMap,
    pub derp_force_websockets: bool,
    pub disable_direct_connections: bool,
    /// `hostname_suffix`, or `coder` when empty or absent.
    pub hostname_suffix: String,
}

/// The REST client of one tunnel.
#[derive(Debug, Clone)]
pub struct Api {
    base: Url,
    http: reqwest::Client,
}

fn host_of(url: &Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
        None => url.host_str().unwrap_or("").to_owned(),
    }
}

/// The full cause chain of an error, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl Api {
    /// A client for `base` sending `Coder-Session-Token: token` and `headers` (in order,
    /// duplicates kept) on every request, trusting what `tls` trusts (the same
    /// configuration the websocket and DERP use, [`crate::transport::tls`]).
    pub fn new(
        base: &Url,
        token: &str,
        headers: &[(String, String)],
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Self, ApiError> {
        let mut map = HeaderMap::new();
        let mut add = |name: &str, value: &str| -> Result<(), ApiError> {
            let invalid = |reason: String| ApiError::InvalidHeader {
                name: name.to_owned(),
                reason,
            };
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
            let mut v = HeaderValue::from_str(value).map_err(|e| invalid(e.to_string()))?;
            v.set_sensitive(true);
            map.append(n, v);
            Ok(())
        };
        add(TOKEN_HEADER, token)?;
        for (n, v) in headers {
            add(n, v)?;
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((**tls).clone())
            .default_headers(map)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("codervpn/", env!("CARGO_PKG_VERSION")))
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| ApiError::Client(chain(&e)))?;
        Ok(Self {
            base: base.clone(),
            http,
        })
    }

    fn url(&self, path: &str) -> Url {
        let mut u = self.base.clone();
        u.set_path(path);
        u.set_query(None);
        u
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, ApiError> {
        let url = self.url(path);
        let shown = url.to_string();
        // A GET that failed after the request went out on a kept-alive connection (the
        // server or a proxy closed it meanwhile) is sent once more, as Go's transport does
        // for idempotent requests; a failure to connect or a timeout is not retried.
        let mut retried = false;
        let resp = loop {
            match self.http.get(url.clone()).send().await {
                Ok(resp) => break resp,
                Err(e) if !retried && !e.is_connect() && !e.is_timeout() && e.is_request() => {
                    tracing::debug!(url = %shown, error = %chain(&e), "GET failed on a used connection; once more");
                    retried = true;
                }
                Err(e) => {
                    return Err(ApiError::Unreachable {
                        host: host_of(&url),
                        url: shown.clone(),
                        reason: chain(&e),
                    });
                }
            }
        };
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            // Only a redirect to another origin is left unfollowed (the policy above).
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            return Err(ApiError::CrossOriginRedirect {
                url: shown,
                location,
                origin: url.origin().ascii_serialization(),
            });
        }
        let body = read_capped(resp, &url).await?;
        if status != 200 {
            let text = error_text(&body);
            return Err(match status {
                401 => ApiError::Unauthorized {
                    url: shown,
                    body: text,
                },
                _ => ApiError::Status {
                    url: shown,
                    status,
                    body: text,
                },
            });
        }
        serde_json::from_slice(&body).map_err(|e| ApiError::BadResponse {
            url: shown,
            reason: e.to_string(),
        })
    }

    /// `GET /api/v2/users/me`.
    pub async fn me(&self) -> Result<Me, ApiError> {
        #[derive(Deserialize)]
        struct Raw {
            id: String,
            username: String,
        }
        let raw: Raw = self.get_json("/api/v2/users/me").await?;
        let id = codervpn_dns::parse_uuid(&raw.id).ok_or_else(|| ApiError::BadResponse {
            url: self.url("/api/v2/users/me").to_string(),
            reason: format!("user id {:?} is not a UUID", raw.id),
        })?;
        Ok(Me {
            id,
            username: raw.username,
        })
    }

    /// `GET /api/v2/workspaceagents/connection`; the embedded relay is pointed at the
    /// access URL.
    pub async fn connection_info(&self) -> Result<ConnectionInfo, ApiError> {
        let raw: RawConnectionInfo = self.get_json("/api/v2/workspaceagents/connection").await?;
        let mut derp_map = raw.derp_map.into_proto();
        rewrite_embedded_relay(&mut derp_map, &self.base);
        Ok(ConnectionInfo {
            derp_map,
            derp_force_websockets: raw.derp_force_websockets,
            disable_direct_connections: raw.disable_direct_connections,
            hostname_suffix: match raw.hostname_suffix {
                Some(s) if !s.is_empty() => s,
                _ => "coder".to_owned(),
            },
        })
    }
}

/// Coder's error bodies are `{"message": …, "detail": …}`; anything else is quoted.
fn error_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct CoderError {
        message: String,
        #[serde(default)]
        detail: String,
    }
    match serde_json::from_slice::<CoderError>(body) {
        Ok(e) if e.detail.is_empty() => e.message,
        Ok(e) => format!("{} {}", e.message, e.detail),
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(MAX_BODY)]);
            text.trim().to_owned()
        }
    }
}

#[derive(Deserialize)]
struct RawConnectionInfo {
    derp_map: RawDerpMap,
    #[serde(default)]
    derp_force_websockets: bool,
    #[serde(default)]
    disable_direct_connections: bool,
    #[serde(default)]
    hostname_suffix: Option<String>,
}

/// The DERP map's JSON form (coder/tailscale `tailcfg/derpmap.go`).
#[derive(Deserialize, Default)]
struct RawDerpMap {
    #[serde(rename = "HomeParams", default)]
    home_params: Option<RawHomeParams>,
    #[serde(rename = "Regions", default)]
    regions: HashMap<String, RawRegion>,
}

#[derive(Deserialize, Default)]
struct RawHomeParams {
    #[serde(rename = "RegionScore", default)]
    region_score: Option<HashMap<String, f64>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRegion {
    #[serde(default)]
    embedded_relay: bool,
    #[serde(rename = "RegionID", default)]
    region_id: i64,
    #[serde(default)]
    region_code: String,
    #[serde(default)]
    region_name: String,
    #[serde(default)]
    avoid: bool,
    #[serde(default)]
    nodes: Vec<RawNode>,
}

#[derive(Deserialize, Default)]
struct RawNode {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "RegionID", default)]
    region_id: i64,
    #[serde(rename = "HostName", default)]
    host_name: String,
    #[serde(rename = "CertName", default)]
    cert_name: String,
    #[serde(rename = "IPv4", default)]
    ipv4: String,
    #[serde(rename = "IPv6", default)]
    ipv6: String,
    #[serde(rename = "STUNPort", default)]
    stun_port: i32,
    #[serde(rename = "STUNOnly", default)]
    stun_only: bool,
    #[serde(rename = "DERPPort", default)]
    derp_port: i32,
    #[serde(rename = "InsecureForTests", default)]
    insecure_for_tests: bool,
    #[serde(rename = "ForceHTTP", default)]
    force_http: bool,
    #[serde(rename = "STUNTestIP", default)]
    stun_test_ip: String,
    #[serde(rename = "CanPort80", default)]
    can_port_80: bool,
}

impl RawDerpMap {
    fn into_proto(self) -> DerpMap {
        let home_params = self.home_params.map(|h| derp_map::HomeParams {
            region_score: h
                .region_score
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| k.parse::<i64>().ok().map(|k| (k, v)))
                .collect(),
        });
        let regions = self
            .regions
            .into_iter()
            .filter_map(|(k, r)| {
                let id = k.parse::<i64>().ok()?;
                Some((
                    id,
                    derp_map::Region {
                        region_id: if r.region_id == 0 { id } else { r.region_id },
                        embedded_relay: r.embedded_relay,
                        region_code: r.region_code,
                        region_name: r.region_name,
                        avoid: r.avoid,
                        nodes: r
                            .nodes
                            .into_iter()
                            .map(|n| derp_map::region::Node {
                                name: n.name,
                                region_id: n.region_id,
                                host_name: n.host_name,
                                cert_name: n.cert_name,
                                ipv4: n.ipv4,
                                ipv6: n.ipv6,
                                stun_port: n.stun_port,
                                stun_only: n.stun_only,
                                derp_port: n.derp_port,
                                insecure_for_tests: n.insecure_for_tests,
                                force_http: n.force_http,
                                stun_test_ip: n.stun_test_ip,
                                can_port_80: n.can_port_80,
                            })
                            .collect(),
                    },
                ))
            })
            .collect();
        DerpMap {
            home_params,
            regions,
        }
    }
}

/// `tailnet.RewriteDERPMapDefaultRelay`: every non-STUN-only node of an embedded-relay
/// region is pointed at the access URL (tailnet.md §3.2).
pub fn rewrite_embedded_relay(map: &mut DerpMap, access: &Url) {
    let host = access.host_str().unwrap_or("").to_owned();
    let port = access
        .port()
        .map(i32::from)
        .unwrap_or(if access.scheme() == "https" { 443 } else { 80 });
    let force_http = access.scheme() == "http";
    for region in map.regions.values_mut().filter(|r| r.embedded_relay) {
        for node in region.nodes.iter_mut().filter(|n| !n.stun_only) {
            node.host_name = host.clone();
            node.derp_port = port;
            node.force_http = force_http;
        }
    }
}

/// The `/derp` URL of a DERP node (tailnet.md §13.3): `http` for `ForceHTTP` nodes, port
/// omitted when it is the scheme's default.
pub fn derp_url(node: &derp_map::region::Node) -> Option<Url> {
    if node.stun_only || node.host_name.is_empty() {
        return None;
    }
    let scheme = if node.force_http { "http" } else { "https" };
    let port = match node.derp_port {
        0 => 443,
        p => p,
    };
    let default = if node.force_http { 80 } else { 443 };
    let host = if node.host_name.contains(':') && !node.host_name.starts_with('[') {
        format!("[{}]", node.host_name)
    } else {
        node.host_name.clone()
    };
    let text = if port == default {
        format!("{scheme}://{host}/derp")
    } else {
        format!("{scheme}://{host}:{port}/derp")
    };
    Url::parse(&text).ok()
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
