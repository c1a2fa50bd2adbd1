#!/usr/bin/env python3
"""Idle cost (issue #18): `codervpn vpn-daemon run` (a real process, userspace mode) joined
to a testbed with N workspaces and left alone, first with no WireGuard session, then after
one TCP connection to every agent (N sessions, then idle). For each phase, over SECONDS:
the daemon's CPU time (utime + stime from /proc/PID/stat, all threads) as a share of one
core, and its context switches per second (voluntary + involuntary, summed over its
threads) — how often the idle tunnel wakes up. The manager thread keeps draining what the
tunnel sends (PeerUpdates every 5 s, logs).

    benches/idle-cpu.py [CODERVPN_BINARY] [N] [SECONDS]   (target/release/codervpn, 100, 60)
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
from daemon_bench import Drained, args, launch, reach_all  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def switches(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def idle(pid, seconds):
    c0, s0, t0 = cpu_seconds(pid), switches(pid), time.monotonic()
    time.sleep(seconds)
    c1, s1, t1 = cpu_seconds(pid), switches(pid), time.monotonic()
    return {"cpu_percent_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 2),
            "wakeups_per_s": round((s1 - s0) / (t1 - t0), 1)}


def main():
    binary, n, seconds = args(60)
    tb, info, child, pipe, pb, port = launch(binary, n)
    d = Drained(pipe, pb, info)
    time.sleep(5)  # the join's own work settles
    joined = idle(child.pid, seconds)
    reached = reach_all(port, d.names)
    time.sleep(5)
    sessions = idle(child.pid, seconds)
    d.stop()
    child.wait(timeout=20)
    tb.terminate()
    print(json.dumps({"agents": len(d.names), "reached": reached, "seconds": seconds,
                      "joined_no_sessions": joined, "after_a_session_with_each": sessions,
                      "peer_updates": d.counts["peer_updates"], "log_records": d.counts["logs"]}))


if __name__ == "__main__":
    main()
