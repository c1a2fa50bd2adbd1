#!/usr/bin/env python3
"""Tunnel RSS with 100 agents: `codervpn vpn-daemon run` (a real process, userspace mode)
joins a testbed with N workspaces, then reaches every agent (a TCP connection through its
SOCKS5 proxy, so WireGuard has a session with each of the N peers), and the daemon's
VmRSS / VmHWM are read from /proc, and VmRSS split into its anonymous part (heap,
stacks) and its file part (pages of the binary itself). Also prints the time from StartRequest to the first
PeerUpdate as the daemon process sees it (one sample per run).

    benches/join-rss.py [CODERVPN_BINARY] [N]     (default target/release/codervpn, 100)
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
import manager  # noqa: E402
from session import socks5_connect  # noqa: E402


def rss(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) / 1024
    return out


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "target", "release", "codervpn")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    tb = subprocess.Popen([binary, "testbed", "serve", "--workspaces", str(n)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    info = json.loads(tb.stdout.readline())
    time.sleep(2)  # agents register
    pb = manager.load_vpn_pb2()
    import socket as s_
    probe = s_.socket()
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
    idle = rss(child.pid)
    t0 = time.perf_counter()
    pipe.send(pb.ManagerMessage(rpc=pb.RPC(msg_id=1), start=pb.StartRequest(
        tunnel_file_descriptor=-1, coder_url=info["url"], api_token=info["token"])))
    first = None
    started = False
    names = []
    while first is None or not started:
        msg = pb.TunnelMessage()
        msg.ParseFromString(pipe.recv_raw())
        kind = msg.WhichOneof("msg")
        if kind == "network_settings":
            pipe.send(pb.ManagerMessage(rpc=pb.RPC(response_to=msg.rpc.msg_id),
                                        network_settings=pb.NetworkSettingsResponse(success=True)))
        elif kind == "start":
            started = True
            if not msg.start.success:
                sys.exit(f"start failed: {msg.start.error_message}")
        elif kind == "peer_update" and first is None:
            first = time.perf_counter() - t0
            names = [sorted(a.fqdn, key=len)[1].rstrip(".") for a in msg.peer_update.upserted_agents]
    joined = rss(child.pid)
    reached = 0
    for name in names:
        for _ in range(20):
            try:
                socks5_connect(("127.0.0.1", port), name, 7).close()
                reached += 1
                break
            except Exception:
                time.sleep(0.1)
    time.sleep(1)
    busy = rss(child.pid)
    pipe.send(pb.ManagerMessage(rpc=pb.RPC(msg_id=2), stop=pb.StopRequest()))
    child.wait(timeout=20)
    tb.terminate()
    print(json.dumps({
        "agents": len(names), "reached": reached,
        "start_to_first_peer_update_ms": round(first * 1000, 1),
        "rss_mib_before_start": round(idle["VmRSS"], 1),
        "rss_mib_after_first_update": round(joined["VmRSS"], 1),
        "rss_mib_after_reaching_all": round(busy["VmRSS"], 1),
        "peak_rss_mib": round(busy["VmHWM"], 1),
        # VmRSS = RssAnon (heap, stacks) + RssFile (the binary's pages read so far, shared).
        "anon_mib_after_reaching_all": round(busy["RssAnon"], 1),
        "file_mib_after_reaching_all": round(busy["RssFile"], 1),
    }))


if __name__ == "__main__":
    main()
