#!/usr/bin/env bash
# dnsperf (Debian) against the in-tunnel resolver: `codervpn up` on a TUN in namespace a
# joins the testbed (namespace b); dnsperf in a sends AAAA queries for every workspace
# name (me / owner / workspace forms, 20 agents) to fd60:627a:a42b::53 through the TUN.
#
#   1. throughput: 10 s, no rate limit  → queries per second
#   2. latency: 10 s at a fixed rate (-Q, default 20000 qps) with -v → p50 / p99 / max
#
#   usage: benches/dnsperf.sh [CODERVPN_BINARY]   (default target/release/codervpn)
# Needs root, iproute2, wireguard-tools, dnsperf, python3.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CODERVPN=${1:-$ROOT/target/release/codervpn}
RATE=${RATE:-20000}
source "$ROOT/tests/netns/lib.sh"
trap cleanup EXIT
setup_hosts

IFACE="${NS_PREFIX}t"
start_testbed --workspaces 20
python3 - "$WORK/testbed.json" > "$WORK/queries" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for a in d["agents"]:
    for name in a["fqdn"]:
        print(name, "AAAA")
PY
URL=$(json 'd["url"]')
TOKEN=$(json 'd["token"]')
ip netns exec "$NS_A" "$CODERVPN" up --url "$URL" --token "$TOKEN" --allow-http \
  --interface "$IFACE" --status-socket none > /dev/null 2> "$WORK/up.log" &
PIDS+=($!)
for _ in $(seq 150); do grep -q "connected; Ctrl-C" "$WORK/up.log" && break; sleep 0.1; done
grep -q "connected; Ctrl-C" "$WORK/up.log" || { cat "$WORK/up.log"; exit 1; }
sleep 1

echo "== throughput ($(wc -l < "$WORK/queries") names, 10 s, 4 clients)"
ip netns exec "$NS_A" dnsperf -s fd60:627a:a42b::53 -d "$WORK/queries" -l 10 -c 4 -T 1 \
  | grep -E "Queries (sent|completed|lost)|Response codes|Queries per second|Average Latency|Latency StdDev"

echo "== latency at $RATE qps (10 s)"
ip netns exec "$NS_A" dnsperf -s fd60:627a:a42b::53 -d "$WORK/queries" -l 10 -Q "$RATE" -v \
  > "$WORK/verbose" 2>/dev/null
python3 - "$WORK/verbose" <<'PY'
import sys
lat = []
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) >= 4 and p[0] == ">" :
        try:
            lat.append(float(p[-1]))
        except ValueError:
            pass
lat.sort()
if not lat:
    sys.exit("no per-query latencies in dnsperf -v output")
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1e3
print(f"queries {len(lat)}  p50 {q(0.50):.3f} ms  p99 {q(0.99):.3f} ms  max {lat[-1]*1e3:.3f} ms")
PY
