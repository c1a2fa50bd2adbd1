"""What benches/join-rss.py and benches/soak.py share: a testbed with N workspaces and a
`codervpn vpn-daemon run` (userspace, SOCKS5 on a free loopback port) handshaken with a
Python manager over pipes, nothing started yet."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
import manager  # noqa: E402
from session import socks5_connect  # noqa: E402


def args(default_seconds=None):
    """The benches' arguments: [CODERVPN_BINARY] [N] [SECONDS] (target/release/codervpn, 100,
    `default_seconds`); SECONDS only when a default is given."""
    a = sys.argv[1:]
    binary = a[0] if a else os.path.join(HERE, "..", "target", "release", "codervpn")
    n = int(a[1]) if len(a) > 1 else 100
    if default_seconds is None:
        return binary, n
    return binary, n, int(a[2]) if len(a) > 2 else default_seconds


def reach_all(port, names):
    """One TCP connection (to the echo port) to each agent through the SOCKS5 proxy, so
    WireGuard has a session with each; retried for 2 s each. Returns how many were reached."""
    reached = 0
    for name in names:
        for _ in range(20):
            try:
                socks5_connect(("127.0.0.1", port), name, 7).close()
                reached += 1
                break
            except Exception:
                time.sleep(0.1)
    return reached


def proc_status(pid, keys=("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads")):
    """The named /proc/PID/status fields, as their numbers (kB for the Vm/Rss ones)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0])
    return out


def launch(binary, n):
    """Returns (testbed process, testbed info, daemon process, manager pipe, vpn_pb2, SOCKS5 port)."""
    tb = subprocess.Popen([binary, "testbed", "serve", "--workspaces", str(n)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    info = json.loads(tb.stdout.readline())
    time.sleep(2)  # agents register
    pb = manager.load_vpn_pb2()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    env = dict(os.environ, CODERVPN_SOCKS5=f"127.0.0.1:{port}")
    m2t_r, m2t_w = os.pipe()
    t2m_r, t2m_w = os.pipe()
    # DAEMON_BINARY: another binary for the daemon (e.g. target/release/codervpn-daemon).
    daemon = os.environ.get("DAEMON_BINARY", binary)
    child = subprocess.Popen([daemon, "vpn-daemon", "run", "--rpc-read-fd", str(m2t_r), "--rpc-write-fd", str(t2m_w)],
                             pass_fds=(m2t_r, t2m_w), stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    os.close(m2t_r)
    os.close(t2m_w)
    pipe = manager.Pipe(t2m_r, m2t_w)
    pipe.w.write(b"codervpn manager 1.3\n")
    pipe.header()
    return tb, info, child, pipe, pb, port


class Drained:
    """A started daemon whose manager side a thread answers and drains: network settings
    accepted, PeerUpdates and log records counted, the agents' names from the first
    PeerUpdate."""

    def __init__(self, pipe, pb, info):
        self.pipe, self.pb = pipe, pb
        self.names = []
        self.counts = {"peer_updates": 0, "logs": 0}
        self.lock = threading.Lock()
        self.started = threading.Event()
        pipe.send(pb.ManagerMessage(rpc=pb.RPC(msg_id=1), start=pb.StartRequest(
            tunnel_file_descriptor=-1, coder_url=info["url"], api_token=info["token"])))
        threading.Thread(target=self._read_all, daemon=True).start()
        if not self.started.wait(60):
            sys.exit("no PeerUpdate within 60 s")

    def _read_all(self):
        pb = self.pb
        while True:
            try:
                raw = self.pipe.recv_raw()
            except Exception:
                return
            if raw is None:
                return
            msg = pb.TunnelMessage()
            msg.ParseFromString(raw)
            kind = msg.WhichOneof("msg")
            if kind == "network_settings":
                with self.lock:
                    self.pipe.send(pb.ManagerMessage(rpc=pb.RPC(response_to=msg.rpc.msg_id),
                                                     network_settings=pb.NetworkSettingsResponse(success=True)))
            elif kind == "start":
                if not msg.start.success:
                    print(f"start failed: {msg.start.error_message}", file=sys.stderr)
                    os._exit(1)
            elif kind == "peer_update":
                self.counts["peer_updates"] += 1
                if not self.names:
                    self.names.extend(sorted(a.fqdn, key=len)[1].rstrip(".")
                                      for a in msg.peer_update.upserted_agents)
                    self.started.set()
            elif kind == "log":
                self.counts["logs"] += 1

    def stop(self):
        with self.lock:
            self.pipe.send(self.pb.ManagerMessage(rpc=self.pb.RPC(msg_id=2), stop=self.pb.StopRequest()))
