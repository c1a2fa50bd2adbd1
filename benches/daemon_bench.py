"""What benches/join-rss.py and benches/soak.py share: a testbed with N workspaces and a
`codervpn vpn-daemon run` (userspace, SOCKS5 on a free loopback port) handshaken with a
Python manager over pipes, nothing started yet."""

import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
import manager  # noqa: E402


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
    child = subprocess.Popen([binary, "vpn-daemon", "run", "--rpc-read-fd", str(m2t_r), "--rpc-write-fd", str(t2m_w)],
                             pass_fds=(m2t_r, t2m_w), stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    os.close(m2t_r)
    os.close(t2m_w)
    pipe = manager.Pipe(t2m_r, m2t_w)
    pipe.w.write(b"codervpn manager 1.3\n")
    pipe.header()
    return tb, info, child, pipe, pb, port
