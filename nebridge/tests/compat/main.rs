//! Compat mode against the real testbed and the real `minisign` CLI: download → verify →
//! load → `OpenTunnel` (dylib-abi-and-compat.md §1, §3–§5; docs/compat-signing.md).
//!
//! Needs `minisign` on PATH (`apt-get install minisign`) and
//! `target/<profile>/libcodervpn_engine.so` (`cargo build -p codervpn-engine`).
//!
//! "Nothing was loaded" is checked in /proc/self/maps: a loaded artifact appears as the memfd
//! `codervpn-compat-<sha1 prefix>-<file>`, and every test serves bytes of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod cache;
mod transfer;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use codervpn_nebridge::compat::{
    ArtifactKind, CompatConfig, CompatError, Platform, Progress, VerifiedArtifact, fetch_verified,
};
use codervpn_proto::vpn::{self, tunnel_message};
use codervpn_testbed::{Testbed, TestbedConfig};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

const MIB: u64 = 1024 * 1024;

/// The engine's cdylib next to this test's deps directory.
fn engine_cdylib() -> Vec<u8> {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/libcodervpn_engine.so
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("libcodervpn_engine.so");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Build the engine cdylib first: `cargo build -p codervpn-engine`",
            path.display()
        )
    })
}

/// Bytes no other test serves (so their memfd name is unique to this test).
fn payload(tag: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0u32..64 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    bytes.extend_from_slice(format!("codervpn-compat-test:{tag}").as_bytes());
    bytes
}

fn sha1_hex(bytes: &[u8]) -> String {
    hex::encode(Sha1::digest(bytes))
}

/// Whether an artifact with these bytes is mapped into this process.
fn loaded(bytes: &[u8]) -> bool {
    let marker = format!("codervpn-compat-{}", &sha1_hex(bytes)[..12]);
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .contains(&marker)
}

fn minisign(args: &[&str]) {
    let out = Command::new("minisign")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run minisign ({e}): install it with `apt-get install minisign`")
        });
    assert!(
        out.status.success(),
        "minisign {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A minisign key pair made by the CLI.
struct Signer {
    dir: tempfile::TempDir,
    public_key: String,
}

impl Signer {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (p, s) = (dir.path().join("k.pub"), dir.path().join("k.key"));
        minisign(&[
            "-G",
            "-W",
            "-p",
            p.to_str().unwrap(),
            "-s",
            s.to_str().unwrap(),
        ]);
        let public_key = std::fs::read_to_string(&p).unwrap();
        Signer { dir, public_key }
    }

    /// The `.minisig` text for `bytes` with this trusted comment.
    fn sign(&self, bytes: &[u8], trusted_comment: &str) -> String {
        let file = self.dir.path().join("artifact");
        let sig = self.dir.path().join("artifact.minisig");
        std::fs::write(&file, bytes).unwrap();
        let key = self.dir.path().join("k.key");
        minisign(&[
            "-S",
            "-s",
            key.to_str().unwrap(),
            "-m",
            file.to_str().unwrap(),
            "-x",
            sig.to_str().unwrap(),
            "-t",
            trusted_comment,
        ]);
        std::fs::read_to_string(&sig).unwrap()
    }
}

fn platform() -> Platform {
    Platform::current().expect("a platform Coder publishes for")
}

fn library_name() -> String {
    platform().file_name(ArtifactKind::Library)
}

/// The trusted comment compat mode expects for the library and `version`.
fn comment(version: &str) -> String {
    format!(
        "codervpn-artifact file={} version={version} platform={}",
        library_name(),
        platform().signing_name()
    )
}

/// A testbed, a private cache directory under a temp dir, a key pair and a config that
/// trusts it.
struct Env {
    testbed: Testbed,
    _tmp: tempfile::TempDir,
    cache: PathBuf,
    signer: Signer,
    config: CompatConfig,
}

impl Env {
    async fn start(version: &str) -> Env {
        let testbed = Testbed::start(TestbedConfig {
            version: version.into(),
            ..TestbedConfig::default()
        })
        .await
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let signer = Signer::new();
        let mut config = CompatConfig::new(
            testbed.url().clone(),
            cache.clone(),
            vec![signer.public_key.clone()],
        );
        config.allow_http = true;
        config.session_token = Some(testbed.token());
        config.headers = vec![("X-Test-Header".into(), "test".into())];
        Env {
            testbed,
            _tmp: tmp,
            cache,
            signer,
            config,
        }
    }

    /// Publishes `bytes` as the library, with a signature over `signed` (when given).
    fn publish(&self, bytes: &[u8], signature: Option<String>) {
        let name = library_name();
        self.testbed.publish(&name, bytes.to_vec());
        if let Some(sig) = signature {
            self.testbed.publish(&format!("{name}.minisig"), sig);
        }
    }

    fn publish_signed(&self, bytes: &[u8], version: &str) {
        self.publish(bytes, Some(self.signer.sign(bytes, &comment(version))));
    }

    async fn fetch(&self) -> Result<VerifiedArtifact, CompatError> {
        fetch_verified(&self.config, ArtifactKind::Library, &mut |_| {}).await
    }

    fn library_url(&self) -> String {
        format!("{}bin/{}", self.testbed.url(), library_name())
    }

    /// The refusal's text, after checking that nothing was loaded or left in the cache.
    async fn refused(&self, bytes: &[u8]) -> String {
        let err = self.fetch().await.expect_err("the artifact was accepted");
        assert!(!loaded(bytes), "{} was loaded", sha1_hex(bytes));
        assert_eq!(cache_files(&self.cache), Vec::<String>::new(), "{err}");
        err.to_string()
    }
}

/// Names in the cache directory (none when it does not exist).
fn cache_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_engine_library_is_downloaded_verified_loaded_and_opened() {
    let env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = engine_cdylib();
    env.publish_signed(&bytes, "2.24.3");
    let mut config = env.config.clone();
    config.max_bytes = 512 * MIB; // a debug build of the engine is ~100 MiB
    let seen = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let sink = seen.clone();
    let artifact = fetch_verified(&config, ArtifactKind::Library, &mut |p| {
        sink.lock().unwrap().push(p)
    })
    .await
    .unwrap();

    assert!(artifact.signature_checked && !artifact.from_cache);
    assert_eq!(artifact.server_version.raw, "v2.24.3");
    assert_eq!(artifact.sha1, sha1_hex(&bytes));
    let last = *seen.lock().unwrap().last().unwrap();
    let len = bytes.len() as u64;
    assert_eq!(
        last,
        Progress {
            bytes: len,
            total: Some(len)
        }
    );
    assert_eq!(
        std::fs::read(env.cache.join(library_name())).unwrap(),
        bytes,
        "the verified file is cached"
    );
    assert!(!loaded(&bytes));

    let library = artifact.load_library().unwrap();
    assert!(loaded(&bytes));
    let tunnel = library.open_tunnel(Duration::from_secs(5)).await.unwrap();
    let (mut conn, _keep_loaded) = tunnel.into_parts();
    assert_eq!(conn.negotiated().to_string(), "1.3");
    let reply = conn
        .handle()
        .request(common::get_peer_update())
        .await
        .unwrap();
    assert_eq!(
        reply.msg,
        Some(tunnel_message::Msg::PeerUpdate(vpn::PeerUpdate::default()))
    );
    let reply = conn.handle().request(common::stop()).await.unwrap();
    assert_eq!(
        reply.msg,
        Some(tunnel_message::Msg::Stop(vpn::StopResponse {
            success: true,
            error_message: String::new()
        }))
    );
    common::drain(&mut conn).await;

    // The same bytes are loaded once per process; a second tunnel opens on the same image.
    let again = artifact.load_library().unwrap();
    assert!(Arc::ptr_eq(&library, &again));
    let mut second = again.open_tunnel(Duration::from_secs(5)).await.unwrap();
    let reply = second
        .connection
        .handle()
        .request(common::stop())
        .await
        .unwrap();
    assert!(matches!(reply.msg, Some(tunnel_message::Msg::Stop(_))));
    common::drain(&mut second.connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_etag_revalidates_without_transferring_the_body() {
    let env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = payload("etag");
    env.publish_signed(&bytes, "2.24.3");
    let first = env.fetch().await.unwrap();
    assert!(!first.from_cache);
    assert_eq!(env.testbed.bin_bodies_served(&library_name()), 1);

    let mut progress = Vec::new();
    let second = fetch_verified(&env.config, ArtifactKind::Library, &mut |p| {
        progress.push(p)
    })
    .await
    .unwrap();

    assert!(second.from_cache, "the server answered 304");
    assert_eq!(second.bytes(), &bytes[..]);
    assert_eq!(
        env.testbed.bin_bodies_served(&library_name()),
        1,
        "no second body"
    );
    assert!(progress.is_empty(), "{progress:?}");
    assert!(!loaded(&bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_cache_is_replaced_by_a_fresh_download() {
    let env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = payload("tampered-cache");
    env.publish_signed(&bytes, "2.24.3");
    env.fetch().await.unwrap();
    let cached = env.cache.join(library_name());
    let mut on_disk = std::fs::read(&cached).unwrap();
    on_disk[10] ^= 0xff;
    std::fs::write(&cached, &on_disk).unwrap();

    let artifact = env.fetch().await.unwrap();

    assert!(!artifact.from_cache, "the ETag no longer matched");
    assert_eq!(artifact.bytes(), &bytes[..]);
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);
    assert_eq!(env.testbed.bin_bodies_served(&library_name()), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_copy_failing_after_304_is_deleted_and_downloaded_once_more() {
    let mut env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = payload("revalidate");
    env.publish_signed(&bytes, "2.24.3");
    env.fetch().await.unwrap();
    env.config.public_keys = vec![Signer::new().public_key];

    let err = env.refused(&bytes).await;

    assert_eq!(
        err,
        format!(
            "signature check failed: {} is signed with a key that is none of the 1 configured public keys",
            library_name()
        )
    );
    assert_eq!(
        env.testbed.bin_bodies_served(&library_name()),
        2,
        "one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flipped_byte_fails_the_signature_check() {
    let env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = payload("flipped");
    let signature = env.signer.sign(&bytes, &comment("2.24.3"));
    let mut tampered = bytes.clone();
    tampered[1000] ^= 0x01;
    env.publish(&tampered, Some(signature));

    let err = env.refused(&tampered).await;

    assert!(
        err.starts_with(
            "signature check failed: the minisign signature does not match the bytes of coder-vpn-"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_by_a_key_that_is_not_pinned_is_refused() {
    let env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = payload("wrong-key");
    let stranger = Signer::new();
    env.publish(&bytes, Some(stranger.sign(&bytes, &comment("2.24.3"))));

    let err = env.refused(&bytes).await;

    assert_eq!(
        err,
        format!(
            "signature check failed: {} is signed with a key that is none of the 1 configured public keys",
            library_name()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_signature_is_refused() {
    let env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = payload("unsigned");
    env.publish(&bytes, None);

    let err = env.refused(&bytes).await;

    assert_eq!(
        err,
        format!(
            "signature check failed: this Coder server publishes no signature for {} ({}.minisig answered 404)",
            library_name(),
            env.library_url()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_for_another_coder_version_is_refused() {
    let env = Env::start("v2.24.3").await;
    let bytes = payload("other-version");
    env.publish_signed(&bytes, "2.24.1");

    let err = env.refused(&bytes).await;

    assert_eq!(
        err,
        format!(
            "version check failed: {} is signed for Coder 2.24.1, but the server runs 2.24.3 (\"v2.24.3\")",
            library_name()
        )
    );
}

/// A signature is bound to its file and platform too: a valid signature by the pinned key,
/// for this version, made for another artifact, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_for_another_file_or_platform_is_refused() {
    let env = Env::start("v2.24.3").await;
    let ours = comment("2.24.3");
    let platform = platform().signing_name();
    for (what, got, want) in [
        ("file", "coder-vpn-other.so", library_name()),
        ("platform", "plan9-mips", platform.clone()),
    ] {
        let tc = ours.replace(&format!("{what}={want}"), &format!("{what}={got}"));
        assert_ne!(tc, ours);
        let bytes = payload(&format!("another-{what}"));
        env.publish(&bytes, Some(env.signer.sign(&bytes, &tc)));
        let err = env.refused(&bytes).await;
        assert!(
            err.contains(&format!(
                "it is signed for {what}={got}, expected {what}={want}"
            )),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_older_than_2_20_0_is_refused_before_downloading() {
    let env = Env::start("v2.19.9").await;
    let bytes = payload("too-old");
    env.publish_signed(&bytes, "2.19.9");

    let err = env.refused(&bytes).await;

    assert_eq!(
        err,
        format!(
            "server version check failed: the Coder server at {} reports version \"v2.19.9\", below the minimum 2.20.0 compat mode supports for CoderVPN library",
            env.testbed.url()
        )
    );
    assert_eq!(env.testbed.bin_bodies_served(&library_name()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublished_library_gets_the_not_published_message() {
    let env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;

    let err = env.refused(b"").await;

    assert_eq!(
        err,
        format!(
            "this Coder server does not publish the CoderVPN library ({} answered 404)",
            env.library_url()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_url_is_refused_unless_allow_http() {
    let mut env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = payload("http");
    env.publish_signed(&bytes, "2.24.3");
    env.config.allow_http = false;

    let err = env.refused(&bytes).await;

    assert!(
        err.starts_with(&format!(
            "refusing to download {}: only https:// URLs are allowed",
            env.testbed.url()
        )),
        "{err}"
    );
    assert_eq!(env.testbed.bin_bodies_served(&library_name()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_accepts_an_unsigned_file_but_still_checks_the_server() {
    let mut env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = payload("insecure");
    env.publish(&bytes, None);
    env.config.insecure_skip_verify = true;
    env.config.public_keys.clear();

    let artifact = env.fetch().await.unwrap();

    assert!(!artifact.signature_checked);
    assert_eq!(artifact.bytes(), &bytes[..]);
    assert!(!loaded(&bytes));
}
