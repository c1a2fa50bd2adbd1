#!/usr/bin/env python3
"""Tunnel RSS with 100 agents: `codervpn vpn-daemon run` (a real process, userspace mode)
joins a testbed with N workspaces, then reaches every agent (a TCP connection through its
SOCKS5 proxy, so WireGuard has a session with each of the N peers), and the daemon's
VmRSS / VmHWM are read from /proc, and VmRSS split into its anonymous part (heap,
stacks) and its file part (pages of the binary itself). Also prints the time from StartRequest to the first
PeerUpdate as the daemon process sees it (one sample per run).

    benches/join-rss.py [CODERVPN_BINARY] [N]     (default target/release/codervpn, 100)

With JOIN_RSS_SMAPS=1, also prints (stderr) the resident size of the largest mappings
after reaching every agent.
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
from daemon_bench import args, launch, proc_status, reach_all  # noqa: E402


def rss(pid):
    return {k: v / 1024 for k, v in proc_status(pid).items() if k != "Threads"}


def smaps_summary(pid, top=12):
    """Resident KiB per mapping (file name and permissions, or [heap]/[anon]), largest first."""
    sizes = {}
    key = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5:
                name = parts[5] if len(parts) > 5 else "[anon]"
                key = f"{os.path.basename(name)} {parts[1]}"
            elif parts[0] == "Rss:":
                sizes[key] = sizes.get(key, 0) + int(parts[1])
    return [f"{kib / 1024:7.2f} MiB  {k}" for k, kib in sorted(sizes.items(), key=lambda kv: -kv[1])[:top]]


def main():
    binary, n = args()
    tb, info, child, pipe, pb, port = launch(binary, n)
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
    reached = reach_all(port, names)
    time.sleep(1)
    busy = rss(child.pid)
    if os.environ.get("JOIN_RSS_SMAPS"):
        for line in smaps_summary(child.pid):
            print(line, file=sys.stderr)
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
