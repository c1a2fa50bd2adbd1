#!/usr/bin/env bash
# The tailnet data path against Coder's own Go code, in one run: a Go agent (tailnet.Conn of
# the pinned coder release, served by `coderpeer serve` in host b) reached from host a by
#   ours  `codervpn up` (TUN)                       — our engine
#   go    `coder vpn-daemon run` (its own coder0)   — Coder's Go tunnel, driven by the Go
#         manager (`coderpeer manager --hold`)
# both on the direct UDP path over the veth. For each: ping RTT p50/p99 at 20 ms and
# 500 ms intervals, single-stream TCP into the agent's discard service, and the CPU seconds
# every process of host a (tunnel, manager, sender) and of host b (server with the agent)
# used during that stream. Prints a Markdown table.
#
#   cargo build --release -p codervpn-nebridge && tests/coder-go/build.sh
#   sudo CODERVPN=target/release/codervpn benches/coder-go-path.sh [SECONDS] [IMPL…]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SECS=${1:-10}
shift || true
IMPLS=("$@")
[ ${#IMPLS[@]} -eq 0 ] && IMPLS=(ours go)
export CODERVPN=${CODERVPN:-$HERE/../target/release/codervpn}
CODER_GO=${CODER_GO:-$HERE/../target/coder-go}

# cpu_of PID...: user + system CPU seconds of the live ones among PID...
cpu_of() {
  python3 - "$@" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK"); t = 0
for p in sys.argv[1:]:
    try:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
    except OSError:
        pass
print(t / hz)
PY
}

pctl() { python3 -c 'import sys; v=sorted(float(x)*1000 for x in sys.stdin.read().split()); print(int(v[len(v)//2]), int(v[int(len(v)*0.99)-1]))'; }

one() {
  (
    source "$HERE/../tests/netns/lib.sh"
    RESOLV_DIR=/etc/netns/$NS_A
    trap 'cleanup; rm -rf "$RESOLV_DIR"' EXIT
    setup_hosts
    mkdir -p "$RESOLV_DIR"; echo "nameserver 192.0.2.53" > "$RESOLV_DIR/resolv.conf"
    ip netns exec "$NS_B" "$CODER_GO/coderpeer" serve --listen "$VETH_B:8080" --workspaces 1 \
      > "$WORK/testbed.json" 2> "$WORK/testbed.log" &
    PIDS+=($!)
    for _ in $(seq 100); do [ -s "$WORK/testbed.json" ] && break; sleep 0.1; done
    local agent; agent=$(json 'd["agents"][0]["ip"]')
    case "$1" in
      ours)
        CODERVPN_LOG=warn,codervpn_engine::net::direct=info start_up
        ip netns exec "$NS_A" ping -6 -c 2 -W 3 "$agent" >/dev/null || true
        wait_log "is direct via $VETH_B:" 20 0 || { echo "| ours | not direct |"; return; }
        ;;
      go)
        ip netns exec "$NS_A" "$CODER_GO/coderpeer" manager --url "$(json 'd["url"]')" \
          --token "$(json 'd["token"]')" --want-p2p --hold --timeout 60s -- \
          "$CODER_GO/coder" vpn-daemon run --rpc-read-handle 3 --rpc-write-handle 4 \
          > "$WORK/go.out" 2> "$WORK/go.log" &
        PIDS+=($!)
        for _ in $(seq 600); do grep -qs holding "$WORK/go.out" && break; sleep 0.1; done
        grep -qs holding "$WORK/go.out" || { echo "| go | did not start: $(tail -1 "$WORK/go.log") |"; return; }
        ;;
    esac
    ip netns exec "$NS_A" ping -6 -c 20 -i 0.02 -q "$agent" >/dev/null
    local p20 p500 tcp
    p20=$(ip netns exec "$NS_A" ping -6 -c 300 -i 0.02 -W 2 "$agent" | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | pctl)
    p500=$(ip netns exec "$NS_A" ping -6 -c 20 -i 0.5 -W 2 "$agent" | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | pctl)
    # CPU seconds (user + system) of the tunnel process(es) in a and of the server with the
    # agent in b, over the TCP stream.
    local tpids spid c0 s0 c1 s1
    tpids=$(ip netns pids "$NS_A" | tr '\n' ' ')
    spid=$(ip netns pids "$NS_B" | tr '\n' ' ')
    c0=$(cpu_of $tpids); s0=$(cpu_of $spid)
    tcp=$(ip netns exec "$NS_A" python3 "$HERE/sink_stream.py" "$agent" "$SECS" | cut -d' ' -f1)
    c1=$(cpu_of $tpids); s1=$(cpu_of $spid)
    echo "| $1 | ${p20% *} | ${p20#* } | ${p500% *} | ${p500#* } | $tcp | $(python3 -c "print('%.1f' % (($c1-$c0)))") | $(python3 -c "print('%.1f' % (($s1-$s0)))") |"
  )
}

echo "| tunnel → Go agent (direct) | ping p50 µs @20 ms | p99 µs @20 ms | p50 µs @500 ms | p99 µs @500 ms | TCP a→agent Gb/s | tunnel host CPU-s | agent host CPU-s |"
echo "|---|---|---|---|---|---|---|---|"
for impl in "${IMPLS[@]}"; do
  one "$impl"
done
