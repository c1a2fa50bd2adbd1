//! The private cache directory and the CLI artifact of daemon mode.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_directory_writable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = payload("open-cache");
    env.publish_signed(&bytes, "2.24.3");
    std::fs::create_dir(&env.cache).unwrap();
    std::fs::set_permissions(&env.cache, std::fs::Permissions::from_mode(0o777)).unwrap();

    let err = env.refused(&bytes).await;

    assert_eq!(
        err,
        format!(
            "cache directory {}: is writable by group or others (mode 0777); use chmod 700",
            env.cache.display()
        )
    );
}

/// Names and permission bits of the files in the cache directory.
fn cache_modes(dir: &Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut files: Vec<(String, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
            (e.file_name().to_string_lossy().into_owned(), mode)
        })
        .collect();
    files.sort();
    files
}

/// The CLI is verified, cached as data (mode 0600) and handed out as a sealed memfd to run
/// (issue #17): nothing in the cache directory is executable, before or after a 304, and an
/// executable copy an earlier version left behind (its process gone) is swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_binary_is_verified_cached_non_executable_and_run_from_a_memfd() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let name = platform().file_name(ArtifactKind::Daemon);
    assert_eq!(name, format!("coder-linux-{}", platform().go_arch));
    let bytes = payload("daemon");
    let signed = format!(
        "codervpn-artifact file={name} version=2.24.3 platform={}",
        platform().signing_name()
    );
    env.testbed.publish(&name, bytes.clone());
    env.testbed
        .publish(&format!("{name}.minisig"), env.signer.sign(&bytes, &signed));

    let artifact = fetch_verified(&env.config, ArtifactKind::Daemon, &mut |_| {})
        .await
        .unwrap();
    let exe = artifact.executable().unwrap();

    assert!(exe.in_memory(), "{exe:?}");
    let path = exe.exec_path();
    assert!(path.starts_with("/proc/self/fd"), "{}", path.display());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let link = std::fs::read_link(&path).unwrap();
    assert_eq!(
        link.to_str().unwrap(),
        format!(
            "/memfd:codervpn-compat-{}-{name} (deleted)",
            &artifact.sha1[..12]
        )
    );
    assert_eq!(cache_modes(&env.cache), vec![(name.clone(), 0o600)]);
    drop(exe);
    let err = artifact.load_library().unwrap_err().to_string();
    assert!(err.contains("is not a tunnel library"), "{err}");
    assert!(!loaded(&bytes));

    // What an earlier version left: an executable cache file, a copy of a dead process.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = env.cache.join(format!(".{name}.verified-{dead}-0"));
    std::fs::write(&stale, &bytes).unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o500)).unwrap();
    let cached = env.cache.join(&name);
    std::fs::set_permissions(&cached, std::fs::Permissions::from_mode(0o755)).unwrap();
    let again = fetch_verified(&env.config, ArtifactKind::Daemon, &mut |_| {})
        .await
        .unwrap();
    assert!(again.from_cache);
    assert_eq!(cache_modes(&env.cache), vec![(name, 0o600)]);
}

/// Issue #17: a cache directory below a directory anyone may write (no sticky bit) is
/// refused before anything is downloaded, whatever the cache directory's own mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_directory_below_a_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = Env::start(codervpn_testbed::DEFAULT_VERSION).await;
    let bytes = payload("open-parent");
    env.publish_signed(&bytes, "2.24.3");
    let open = env.cache.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    env.config.cache_dir = open.join("cache");

    let err = env.fetch().await.unwrap_err().to_string();

    assert_eq!(
        err,
        format!(
            "cache directory {}: {} above it is writable by group or others without the sticky \
             bit (mode 0777), so they could replace the cache directory; use a cache directory \
             only root and you can change the way to",
            open.join("cache").display(),
            open.display()
        )
    );
    assert!(!loaded(&bytes));
    assert_eq!(env.testbed.bin_bodies_served(&library_name()), 0);
}

/// The CLI as a daemon needs a server of 2.24.2 or later (Coder Desktop's minimum since it
/// runs the CLI); a 2.24.1 server is refused before anything is downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_mode_needs_a_server_of_2_24_2() {
    let env = Env::start("v2.24.1").await;
    let name = platform().file_name(ArtifactKind::Daemon);
    env.testbed.publish(&name, payload("daemon"));
    let err = fetch_verified(&env.config, ArtifactKind::Daemon, &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("reports version \"v2.24.1\", below the minimum 2.24.2 compat mode supports for Coder CLI (vpn-daemon)"),
        "{err}"
    );
    assert_eq!(env.testbed.bin_bodies_served(&name), 0);
}
