#!/usr/bin/env python3
"""Soak (issue #17): `codervpn vpn-daemon run` (a real process, userspace mode) joined to a
testbed with N workspaces, traffic every second — a TCP echo of 1 KiB through its SOCKS5
proxy to the next agent in turn, so every WireGuard session is used and re-used — for
SECONDS, while a manager thread answers and drains everything the tunnel sends (network
settings, PeerUpdates every 5 s, logs). VmRSS is sampled every 10 s; prints the samples,
the least-squares slope (MiB per hour) over the second half (after warm-up), and the peak.

    benches/soak.py [CODERVPN_BINARY] [N] [SECONDS]   (target/release/codervpn, 100, 600)
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
from daemon_bench import Drained, args, launch, proc_status  # noqa: E402
from session import socks5_connect  # noqa: E402


def slope_per_hour(points):
    """Least-squares slope of (seconds, MiB) points, in MiB per hour."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mx) * (v - my) for t, v in points) / den * 3600


def main():
    binary, n, seconds = args(600)
    tb, info, child, pipe, pb, port = launch(binary, n)
    d = Drained(pipe, pb, info)
    names, counts = d.names, d.counts
    payload = os.urandom(1024)
    samples, ok, failed = [], 0, 0
    t0 = time.monotonic()
    next_sample = t0
    i = 0
    while time.monotonic() - t0 < seconds:
        now = time.monotonic()
        if now >= next_sample:
            s = proc_status(child.pid)
            samples.append((round(now - t0), round(s["VmRSS"] / 1024, 2), s["Threads"]))
            next_sample += 10
        name = names[i % len(names)]
        i += 1
        try:
            c = socks5_connect(("127.0.0.1", port), name, 7)
            c.settimeout(10)
            c.sendall(payload)
            got = b""
            while len(got) < len(payload):
                b = c.recv(4096)
                if not b:
                    break
                got += b
            c.close()
            ok += got == payload
            failed += got != payload
        except Exception:
            failed += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    end = proc_status(child.pid)
    d.stop()
    child.wait(timeout=20)
    tb.terminate()
    half = [(t, v) for t, v, _ in samples if t >= seconds / 2]
    print(json.dumps({
        "agents": len(names), "seconds": seconds, "echoes_ok": ok, "echoes_failed": failed,
        "peer_updates": counts["peer_updates"], "log_records": counts["logs"],
        "rss_mib_first": samples[0][1] if samples else None,
        "rss_mib_last": samples[-1][1] if samples else None,
        "peak_rss_mib": round(end["VmHWM"] / 1024, 2),
        "slope_mib_per_hour_second_half": round(slope_per_hour(half), 2),
        "samples": samples,
    }))


if __name__ == "__main__":
    main()
