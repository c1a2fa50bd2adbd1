//! `codervpn demo --once`, the README's main command: testbed + embedded engine +
//! an agent's page fetched by its DNS name through the tunnel, then exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn demo_once_fetches_an_agents_page_by_name_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_codervpn"))
        .args(["demo", "--once"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The live table lists every workspace with a handshake and a latency.
    for ws in ["dev1", "dev2", "dev3"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(ws))
            .unwrap_or_else(|| panic!("no row for {ws}:\n{stdout}"));
        assert!(row.contains(" green ") || row.contains(" yellow "), "{row}");
        assert!(row.contains(&format!("main.{ws}.me.coder.")), "{row}");
        assert!(row.contains(" ms "), "{row}");
    }
    assert!(stderr.contains("HTTP/1.1 200 OK"), "{stderr}");
    assert!(
        stdout.contains("<h1>Hello from agent main of workspace dev"),
        "{stdout}"
    );
    assert!(
        stderr.contains("tunnel asks for DNS server fd60:627a:a42b::53"),
        "{stderr}"
    );
}
