//! `/bin/<file>`: artifacts served the way coderd's `site/bin.go` serves them — `ETag` is
//! the quoted lower-case hex SHA-1, `If-None-Match` → 304, `X-Original-Content-Length`, `_`
//! in the requested name maps to `-`, names with `/` are refused, `GET /bin/` lists.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use sha1::{Digest, Sha1};

/// One published file.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub bytes: Bytes,
    /// `"<sha1 hex>"`, quotes included.
    pub etag: String,
}

impl Artifact {
    pub fn new(bytes: Bytes) -> Self {
        let etag = format!("\"{}\"", hex::encode(Sha1::digest(&bytes)));
        Self { bytes, etag }
    }
}

/// The published files, by name. Replaced whole on every change.
pub type Artifacts = Arc<BTreeMap<String, Artifact>>;

fn plain(status: StatusCode, text: &str) -> Response {
    let mut r = Response::new(Body::from(text.to_owned()));
    *r.status_mut() = status;
    r
}

/// Answers `GET /bin/<name>` (`name` empty = the listing).
pub fn serve(files: &Artifacts, name: &str, headers: &HeaderMap) -> Response {
    if name.is_empty() {
        let listing: String = files.keys().map(|k| format!("{k}\n")).collect();
        return plain(StatusCode::OK, &listing);
    }
    if name.contains('/') {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    let name = name.replace('_', "-");
    let Some(file) = files.get(&name) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let mut builder = Response::builder()
        .header(header::ETAG, &file.etag)
        .header("X-Original-Content-Length", file.bytes.len().to_string())
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == file.etag);
    let body = if not_modified {
        builder = builder.status(StatusCode::NOT_MODIFIED);
        Body::empty()
    } else {
        builder = builder
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, file.bytes.len().to_string());
        Body::from(file.bytes.clone())
    };
    builder
        .body(body)
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}
