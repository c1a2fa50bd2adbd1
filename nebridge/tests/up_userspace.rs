//! `codervpn up --userspace`, as the README's "without root" instructions run it: a testbed
//! deployment (`codervpn testbed serve`), `up` with a SOCKS5 proxy and no TUN, an agent's
//! page fetched by its DNS name through the proxy (the name resolved inside it), and a
//! clean exit on Ctrl-C (SIGINT).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_codervpn");

/// `GET /` from `host:port` through the SOCKS5 proxy at `proxy`, the name resolved by the
/// proxy (ATYP domain); the response body.
fn get_through_socks5(proxy: &str, host: &str, port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&[5, 1, 0])?;
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply)?;
    assert_eq!(
        reply,
        [5, 0],
        "the proxy must accept no-auth from its owner"
    );
    let mut req = vec![5, 1, 0, 3, u8::try_from(host.len()).unwrap()];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req)?;
    let mut head = [0u8; 10];
    s.read_exact(&mut head)?;
    if head[1] != 0 {
        return Err(std::io::Error::other(format!("SOCKS5 reply {}", head[1])));
    }
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// A testbed with one workspace and `codervpn up --userspace` joined to it with a SOCKS5
/// proxy on a free loopback port (plus `extra` flags), once it says it is connected.
struct Running {
    testbed: Child,
    up: Child,
    info: serde_json::Value,
    proxy: String,
    status: std::path::PathBuf,
}

fn start_up(extra: &[&str]) -> Running {
    let (testbed, info) =
        common::spawn_json_line(Command::new(BIN).args(["testbed", "serve", "--workspaces", "1"]));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let proxy = format!("127.0.0.1:{port}");
    let status =
        std::env::temp_dir().join(format!("codervpn-up-us-{}-{port}.sock", std::process::id()));
    let mut up = Command::new(BIN)
        .args(["up", "--userspace", "--socks5", &proxy, "--allow-http"])
        .args(["--url", info["url"].as_str().unwrap()])
        .args(["--token", info["token"].as_str().unwrap()])
        .arg("--status-socket")
        .arg(&status)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stderr = up.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => {
                let done = l.contains("connected; Ctrl-C");
                log.push(l);
                if done {
                    break;
                }
            }
            Err(_) => panic!("up never connected:\n{}", log.join("\n")),
        }
    }
    Running {
        testbed,
        up,
        info,
        proxy,
        status,
    }
}

impl Running {
    /// SIGINT; the exit status (`None` if still running 10 s later, then killed).
    fn ctrl_c(mut self) -> Option<std::process::ExitStatus> {
        unsafe { libc::kill(i32::try_from(self.up.id()).unwrap(), libc::SIGINT) };
        let exit = (0..100).find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            self.up.try_wait().unwrap()
        });
        if exit.is_none() {
            let _ = self.up.kill();
        }
        let _ = self.testbed.kill();
        let _ = self.testbed.wait();
        exit
    }
}

/// The proxy's answer to a SOCKS5 greeting sent by local user `uid` (another process):
/// `[5, 0]` when served, empty when the connection was closed first.
fn greeting_as(uid: u32, proxy: &str) -> Vec<u8> {
    use std::os::unix::process::CommandExt;
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let script = format!(
        "import socket\ns = socket.create_connection(('{host}', {port}), timeout=10)\n\
         s.sendall(b'\\x05\\x01\\x00')\n\
         try:\n    print(s.recv(2).hex())\nexcept OSError:\n    print('')\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8(out.stdout).unwrap();
    (0..hex.trim().len() / 2)
        .map(|i| u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn up_userspace_serves_workspace_names_through_socks5_and_exits_on_ctrl_c() {
    let r = start_up(&[]);
    let agent = &r.info["agents"][0];
    let name = agent["fqdn"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().trim_end_matches('.').to_owned())
        .min_by_key(String::len)
        .unwrap();
    let want = format!(
        "Hello from agent {} of workspace {}",
        agent["name"].as_str().unwrap(),
        agent["workspace"].as_str().unwrap()
    );
    let mut last = String::new();
    let fetched = (0..50).any(|_| match get_through_socks5(&r.proxy, &name, 80) {
        Ok(body) if body.contains(&want) => true,
        other => {
            last = format!("{other:?}");
            std::thread::sleep(Duration::from_millis(200));
            false
        }
    });
    assert!(fetched, "no page from {name} through {}: {last}", r.proxy);
    // Another local user is not served by default (issue #17).
    assert_eq!(greeting_as(12345, &r.proxy), Vec::<u8>::new());
    let status = r.status.clone();
    let exit = r.ctrl_c().expect("up did not exit within 10 s of SIGINT");
    assert!(exit.success(), "up exited with {exit}");
    assert!(!status.exists(), "the status socket is left behind");
}

/// `--socks5-any-user` opens the proxy to every local user.
#[test]
fn socks5_any_user_serves_other_local_users() {
    let r = start_up(&["--socks5-any-user"]);
    assert_eq!(greeting_as(12345, &r.proxy), [5, 0]);
    assert!(r.ctrl_c().is_some_and(|e| e.success()));
}
