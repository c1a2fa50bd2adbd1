//! The test deployment's servers (engine feature `test-servers`: a DERP server, the dRPC
//! server side, the simulated agents' services) are not in what is packaged: the C API and
//! the engine cdylib built on their own (`cargo build -p codervpn-capi`, `-p
//! codervpn-engine`). Read from cargo's own feature resolution, so a dependency that turns
//! the feature on for them fails here. (`cargo build --workspace` unifies features across
//! members and does include them: the testbed needs them.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// The engine's features when `package` is built alone (no dev-dependencies).
fn engine_features(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--locked", "-p", package])
        .args([
            "-e",
            "no-dev,features",
            "-i",
            "codervpn-engine",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn packaged_builds_have_no_test_servers() {
    for package in ["codervpn-capi", "codervpn-engine"] {
        let tree = engine_features(package);
        assert!(
            tree.contains("codervpn-engine feature \"default\""),
            "cargo tree printed no engine features for {package}:\n{tree}"
        );
        assert!(
            !tree.contains("test-servers"),
            "{package} built alone turns on the engine's test-servers:\n{tree}"
        );
    }
    // The check can see the feature where it is on: the testbed's build.
    assert!(
        engine_features("codervpn-testbed").contains("codervpn-engine feature \"test-servers\"")
    );
}
