//! A C program embeds the whole client through `codervpn.h` and `libcodervpn.so`:
//! userspace mode against an in-process testbed, network settings applied through the
//! callback, a peer update naming the testbed's agents, a clean stop, exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use codervpn_testbed::{Testbed, TestbedConfig};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn c_program_starts_a_session_sees_agents_and_stops_cleanly() {
    let exe = compile_embed_c();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let testbed = rt
        .block_on(Testbed::start(TestbedConfig {
            workspaces: 2,
            ..Default::default()
        }))
        .unwrap();
    let summary = testbed.summary();
    let url = summary["url"].as_str().unwrap().to_owned();
    let token = summary["token"].as_str().unwrap().to_owned();
    let agents: Vec<String> = summary["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();

    let (ok, stdout, stderr) = run(&exe, &[&url, &token, "45"], Duration::from_secs(90));

    assert!(ok, "embed exited non-zero\n{stdout}\n{stderr}");
    assert!(stdout.contains("version codervpn "), "{stdout}");
    assert!(stdout.contains("utun_fd -1"), "{stdout}");
    assert!(stdout.contains("null cfg -1\n"), "{stdout}");
    assert!(stdout.contains("null session stop -1\n"), "{stdout}");
    assert!(stdout.contains("settings applied ("), "{stdout}");
    assert!(!stdout.contains("settings refused"), "{stdout}");
    assert!(stdout.contains("\nstarted\n"), "{stdout}");
    let seen: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("agent "))
        .collect();
    assert!(!seen.is_empty(), "no agent named\n{stdout}");
    for name in &seen {
        assert!(agents.iter().any(|a| a == name), "unknown agent {name}");
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("log ")),
        "the tunnel's logs reach the log callback\n{stdout}"
    );
    assert!(stdout.trim_end().ends_with("stop 0"), "{stdout}");
    drop(testbed);
}

/// `cc tests/c/embed.c -lcodervpn`, against the library cargo built for this test.
fn compile_embed_c() -> PathBuf {
    let lib_dir = library_dir();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("embed");
    let status = Command::new("cc")
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Wextra",
            "-Werror",
        ])
        .arg("-I")
        .arg(Path::new(MANIFEST_DIR).join("include"))
        .arg(Path::new(MANIFEST_DIR).join("tests/c/embed.c"))
        .arg("-L")
        .arg(&lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lcodervpn", "-lpthread", "-o"])
        .arg(&out)
        .status()
        .expect("running cc (install gcc)");
    assert!(status.success(), "cc failed for tests/c/embed.c");
    out
}

/// Where cargo put `libcodervpn.so` for this build: beside this test in `deps/` (the
/// copy in the profile directory is only refreshed by `cargo build`).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps, deps.parent().unwrap()]
        .into_iter()
        .find(|d| d.join("libcodervpn.so").exists())
        .unwrap_or_else(|| panic!("no libcodervpn.so near {}", deps.display()))
        .to_path_buf()
}

/// Runs `exe`, killing it after `limit`; (exit 0, stdout, stderr). Output is read while
/// it runs, so a chatty child cannot block on a full pipe.
fn run(exe: &Path, args: &[&str], limit: Duration) -> (bool, String, String) {
    let child = Command::new(exe)
        .args(args)
        // cargo's LD_LIBRARY_PATH names the profile directory too, whose copy of the
        // library is stale under `cargo test`; the binary's rpath names the right one.
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: signals our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            rx.recv().unwrap()
        }
    }
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
