//! Which HTTP headers a DERP node gets (issue #17, finding 4).
//!
//! Upstream (`vpn/client.go` of coder v2.36.1) hands every DERP node — every region, also
//! `ForceHTTP` ones in cleartext — the session token and the manager's extra headers
//! (`tailnet.Options.DERPHeader`). No Coder relay reads the token: coderd's `/derp`
//! (`coderd/coderd.go`) and a workspace proxy's (`enterprise/wsproxy/wsproxy.go`) are
//! served without the API-key middleware, since a relay trusts node keys, not users. So
//! here:
//! - the session token goes only to a node on the Coder URL's own origin (scheme, host and
//!   port) — the embedded relay, which already sees it on the API — never to another
//!   region, which may be a third party's relay;
//! - the extra headers (`--header`, `StartRequest.headers`: e.g. an access proxy's
//!   credentials, which a proxy in front of a workspace proxy's relay may need) go to every
//!   node, as upstream — but never in cleartext to an `http://` node when the Coder URL
//!   itself is `https://`.

use url::Url;

/// The headers of a session, sorted per DERP node by [`DerpHeaders::for_node`].
#[derive(Clone, Debug)]
pub struct DerpHeaders {
    coder: Url,
    token: (String, String),
    extra: Vec<(String, String)>,
}

impl DerpHeaders {
    /// For a session with `coder` as its Coder URL, the session token as header
    /// `token.0`, and `extra` headers (in order).
    pub fn new(coder: Url, token: (String, String), extra: Vec<(String, String)>) -> Self {
        Self {
            coder,
            token,
            extra,
        }
    }

    /// What `node` (its `/derp` URL) gets, in order: the token (same origin only), then the
    /// extra headers (unless they would leave an https deployment in cleartext).
    pub fn for_node(&self, node: &Url) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(1 + self.extra.len());
        if node.origin() == self.coder.origin() {
            out.push(self.token.clone());
        }
        let downgrade = self.coder.scheme() == "https" && node.scheme() != "https";
        if !downgrade {
            out.extend(self.extra.iter().cloned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn headers(coder: &str) -> DerpHeaders {
        DerpHeaders::new(
            coder.parse().unwrap(),
            ("Coder-Session-Token".into(), "secret".into()),
            vec![("X-Access".into(), "corp".into())],
        )
    }

    fn names(h: &DerpHeaders, node: &str) -> Vec<String> {
        h.for_node(&node.parse().unwrap())
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn the_embedded_relay_gets_the_token_and_the_extra_headers() {
        let h = headers("https://coder.example.com");
        assert_eq!(
            names(&h, "https://coder.example.com/derp"),
            ["Coder-Session-Token", "X-Access"]
        );
        assert_eq!(
            names(&h, "https://coder.example.com:443/derp"),
            ["Coder-Session-Token", "X-Access"],
            "the default port is the same origin"
        );
    }

    #[test]
    fn another_origin_never_gets_the_token() {
        let h = headers("https://coder.example.com");
        for node in [
            "https://derp.example.net/derp",
            "https://coder.example.com:8443/derp",
            "https://proxy.coder.example.com/derp",
        ] {
            assert_eq!(names(&h, node), ["X-Access"], "{node}");
        }
    }

    #[test]
    fn nothing_leaves_an_https_deployment_in_cleartext() {
        let h = headers("https://coder.example.com");
        assert!(names(&h, "http://coder.example.com/derp").is_empty());
        assert!(names(&h, "http://derp.example.net:3340/derp").is_empty());
    }

    #[test]
    fn an_http_deployment_keeps_its_cleartext_relays() {
        let h = headers("http://10.0.0.1:8080");
        assert_eq!(
            names(&h, "http://10.0.0.1:8080/derp"),
            ["Coder-Session-Token", "X-Access"]
        );
        assert_eq!(names(&h, "http://10.0.0.1:9000/derp"), ["X-Access"]);
    }
}
