//! Shared pieces of the manager-side tests: pipes, a spawned `vpn-daemon`, and messages.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{PipeReader, PipeWriter};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use codervpn_proto::fd::{FdReader, FdWriter};
use codervpn_proto::vpn::{self, ManagerMessage, TunnelMessage, manager_message, tunnel_message};
use codervpn_proto::{Connection, Incoming, ManagerSide, VersionList};

pub const T: Duration = Duration::from_secs(20);

/// Two pipes: manager → tunnel and tunnel → manager.
pub struct Pipes {
    /// Tunnel reads here (manager → tunnel).
    pub tunnel_read: PipeReader,
    /// Tunnel writes here (tunnel → manager).
    pub tunnel_write: PipeWriter,
    pub manager_read: PipeReader,
    pub manager_write: PipeWriter,
}

pub fn pipes() -> Pipes {
    let (tunnel_read, manager_write) = std::io::pipe().unwrap();
    let (manager_read, tunnel_write) = std::io::pipe().unwrap();
    Pipes {
        tunnel_read,
        tunnel_write,
        manager_read,
        manager_write,
    }
}

/// Async halves over the manager's pipe ends.
pub fn manager_ends(read: PipeReader, write: PipeWriter) -> (FdReader, FdWriter) {
    (
        FdReader::new(OwnedFd::from(read)).unwrap(),
        FdWriter::new(OwnedFd::from(write)).unwrap(),
    )
}

pub async fn manager(read: PipeReader, write: PipeWriter) -> Connection<ManagerSide> {
    let (r, w) = manager_ends(read, write);
    tokio::time::timeout(
        T,
        Connection::<ManagerSide>::handshake(r, w, VersionList::current()),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed")
}

/// `codervpn vpn-daemon run` with the tunnel's pipe ends as fds 3 (read) and 4 (write).
pub fn spawn_daemon(
    read: PipeReader,
    write: PipeWriter,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Child {
    spawn_daemon_binary(env!("CARGO_BIN_EXE_codervpn"), read, write, extra, env)
}

/// [`spawn_daemon`] with another binary taking the same `vpn-daemon run` command line.
pub fn spawn_daemon_binary(
    binary: &str,
    read: PipeReader,
    write: PipeWriter,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let mut cmd = Command::new(binary);
    cmd.args(["vpn-daemon", "run"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (r, w) = (read.as_raw_fd(), write.as_raw_fd());
    // SAFETY: dup2 is async-signal-safe; the duplicates at 3 and 4 have close-on-exec off.
    unsafe {
        cmd.pre_exec(move || {
            // Move both out of the way first: dup2 onto the same number would keep
            // close-on-exec set.
            let tmp_r = libc::fcntl(r, libc::F_DUPFD, 10);
            let tmp_w = libc::fcntl(w, libc::F_DUPFD, 10);
            if tmp_r < 0 || tmp_w < 0 || libc::dup2(tmp_r, 3) < 0 || libc::dup2(tmp_w, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop((read, write));
    child
}

pub fn daemon_args() -> [&'static str; 4] {
    ["--rpc-read-fd", "3", "--rpc-write-fd", "4"]
}

/// Waits for the child to exit; returns its status and stderr.
pub fn wait(child: Child) -> (std::process::ExitStatus, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let out = child.wait_with_output().unwrap();
        let _ = tx.send(out);
    });
    match rx.recv_timeout(T) {
        Ok(out) => (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(_) => {
            // SAFETY: sending SIGKILL to our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("daemon did not exit in time");
        }
    }
}

pub fn msg(m: manager_message::Msg) -> ManagerMessage {
    ManagerMessage {
        rpc: None,
        msg: Some(m),
    }
}

pub fn start_request(url: &str) -> ManagerMessage {
    msg(manager_message::Msg::Start(vpn::StartRequest {
        tunnel_file_descriptor: -1,
        coder_url: url.into(),
        api_token: "secret-session-token".into(),
        headers: vec![vpn::start_request::Header {
            name: "X-Test-Header".into(),
            value: "test".into(),
        }],
        device_id: "device001".into(),
        device_os: "Linux".into(),
        coder_desktop_version: "0.0.0-test".into(),
    }))
}

pub fn get_peer_update() -> ManagerMessage {
    msg(manager_message::Msg::GetPeerUpdate(vpn::GetPeerUpdate {}))
}

pub fn stop() -> ManagerMessage {
    msg(manager_message::Msg::Stop(vpn::StopRequest {}))
}

pub fn wake() -> ManagerMessage {
    msg(manager_message::Msg::Wake(vpn::WakeRequest {}))
}

/// The whole exchange a manager has with a tunnel of this build: start (which fails
/// honestly: joining is not implemented yet), get_peer_update, wake, stop, EOF.
pub async fn full_exchange(conn: &mut Connection<ManagerSide>) {
    assert_eq!(conn.negotiated().to_string(), "1.3");
    let reply = conn
        .handle()
        .request(start_request("http://127.0.0.1:9"))
        .await
        .unwrap();
    let Some(tunnel_message::Msg::Start(start)) = reply.msg else {
        panic!("not a StartResponse: {reply:?}")
    };
    assert!(!start.success);
    assert!(
        start
            .error_message
            .starts_with("failed to start connection: "),
        "{}",
        start.error_message
    );
    assert!(
        start
            .error_message
            .contains("http://127.0.0.1:9/api/v2/users/me"),
        "{}",
        start.error_message
    );

    let reply = conn.handle().request(get_peer_update()).await.unwrap();
    assert_eq!(
        reply.msg,
        Some(tunnel_message::Msg::PeerUpdate(vpn::PeerUpdate::default()))
    );
    let reply = conn.handle().request(wake()).await.unwrap();
    assert_eq!(
        reply.msg,
        Some(tunnel_message::Msg::Wake(vpn::WakeResponse {}))
    );

    let reply = conn.handle().request(stop()).await.unwrap();
    assert_eq!(
        reply.rpc,
        Some(vpn::Rpc {
            msg_id: 0,
            response_to: 4
        })
    );
    assert_eq!(
        reply.msg,
        Some(tunnel_message::Msg::Stop(vpn::StopResponse {
            success: true,
            error_message: String::new()
        }))
    );
    let logs = drain(conn).await;
    assert!(
        logs.iter().any(|l| l.message == "starting tunnel"),
        "{logs:?}"
    );
    assert!(!format!("{logs:?}").contains("secret-session-token"));
}

/// Reads until EOF; returns the Log messages seen. Fails on anything but logs.
pub async fn drain(conn: &mut Connection<ManagerSide>) -> Vec<vpn::Log> {
    let mut logs = Vec::new();
    while let Some(item) = tokio::time::timeout(T, conn.next_incoming())
        .await
        .expect("no EOF")
    {
        match item {
            Incoming::OneWay(TunnelMessage {
                msg: Some(tunnel_message::Msg::Log(l)),
                ..
            }) => logs.push(l),
            other => panic!("unexpected message after stop: {other:?}"),
        }
    }
    logs
}

/// Runs `tests/netns/<name> args…` with `CODERVPN` set to this build's binary; fails the
/// test unless it exits 0 and its stdout contains `want`. Returns its stdout.
pub fn netns_script(name: &str, args: &[&str], want: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/netns")
        .join(name);
    let out = Command::new("bash")
        .arg(path)
        .args(args)
        .env("CODERVPN", env!("CARGO_BIN_EXE_codervpn"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(want),
        "{name} {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// Spawns `cmd` (stdout piped, stderr dropped) and returns it with the JSON line it prints
/// first, as `codervpn testbed serve` and `coderpeer serve` do.
pub fn spawn_json_line(cmd: &mut Command) -> (Child, serde_json::Value) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, serde_json::from_str(&line).unwrap())
}
