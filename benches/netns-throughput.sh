#!/usr/bin/env bash
# Side-by-side data-plane benchmark in one run: the same two-namespace topology (veth,
# 10.201.0.0/24) carrying, in turn, the bare veth, our `codervpn wg up`, wireguard-go
# (Debian's, and current from source: `wggo-current`, built by tests/coder-go/build.sh) and
# boringtun-cli. For each: iperf3 single-stream TCP both ways, UDP at a fixed rate (loss),
# and ping RTT p50/p99, and the CPU the tunnel processes of both ends use per GB carried by
# one TCP stream at a fixed rate (CPU_RATE, default 400M; utime + stime of every thread,
# from /proc). Prints a Markdown table.
#
#   cargo build --release -p codervpn-nebridge
#   sudo CODERVPN=target/release/codervpn benches/netns-throughput.sh [SECONDS] [IMPL…]
#
# IMPL defaults to: bare ours wggo wggo-current boringtun. `ours-base` is ours again from the
# binary in OURS_BASE (an earlier build, for a before/after in one run). UDP_RATE (default
# 200M) is the offered UDP rate; UDP_ARGS adds iperf3 options to the UDP test (e.g. "-w 4M"
# for a receive buffer that holds bursts). Needs root, iproute2, wireguard-tools, iperf3, iputils-ping,
# wireguard-go, boringtun-cli.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SECS=${1:-10}
shift || true
IMPLS=("$@")
[ ${#IMPLS[@]} -eq 0 ] && IMPLS=(bare ours wggo wggo-current boringtun)
WGGO_CURRENT=${WGGO_CURRENT:-$HERE/../target/coder-go/wireguard-go}
export CODERVPN=${CODERVPN:-$HERE/../target/release/codervpn}
UDP_RATE=${UDP_RATE:-200M}
CPU_RATE=${CPU_RATE:-400M}
PINGS=${PINGS:-500}

# cpu_ticks PID...: utime + stime of the processes, in clock ticks.
cpu_ticks() {
  local t=0 pid f
  for pid in "$@"; do
    read -r -a f < <(sed 's/^.*) //' "/proc/$pid/stat")
    t=$((t + f[11] + f[12]))
  done
  echo "$t"
}

one() { # one IMPL -> "| impl | a->b | b->a | udp | loss | p50 | p99 | cpu/GB |"
  (
    source "$HERE/../tests/netns/lib.sh"
    trap cleanup EXIT
    setup_hosts
    local dst=$TUN_B
    case "$1" in
      bare) dst=$VETH_B ;;
      ours) start_ours a; start_ours b ;;
      ours-base) CODERVPN=${OURS_BASE:?set OURS_BASE to an earlier codervpn binary}; start_ours a; start_ours b ;;
      wggo) start_wggo a; start_wggo b ;;
      wggo-current) start_wggo a "$WGGO_CURRENT"; start_wggo b "$WGGO_CURRENT" ;;
      boringtun) start_boringtun a; start_boringtun b ;;
    esac
    ip netns exec "$NS_A" ping -c 2 -W 5 "$dst" >/dev/null
    ip netns exec "$NS_B" iperf3 -s -D -1 --logfile "$WORK/s1" >/dev/null
    sleep 0.3
    local ab ba udp loss
    ab=$(ip netns exec "$NS_A" iperf3 -c "$dst" -t "$SECS" -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
    ip netns exec "$NS_B" iperf3 -s -D -1 --logfile "$WORK/s2" >/dev/null
    sleep 0.3
    ba=$(ip netns exec "$NS_A" iperf3 -c "$dst" -t "$SECS" -R -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
    ip netns exec "$NS_B" iperf3 -s -D -1 --logfile "$WORK/s3" >/dev/null
    sleep 0.3
    read -r udp loss < <(ip netns exec "$NS_A" iperf3 -c "$dst" -u -b "$UDP_RATE" -l 1200 -t "$SECS" ${UDP_ARGS:-} -J | python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum"]; print("%.2f %.2f" % (e["bits_per_second"]*(1-e["lost_percent"]/100)/1e9, e["lost_percent"]))')
    local rtts
    rtts=$(ip netns exec "$NS_A" ping -c "$PINGS" -i 0.002 -q -W 2 "$dst" >/dev/null; ip netns exec "$NS_A" ping -c "$PINGS" -i 0.002 -W 2 "$dst" | sed -n 's/.*time=\([0-9.]*\) ms/\1/p')
    read -r p50 p99 < <(echo "$rtts" | python3 -c 'import sys; v=sorted(float(x)*1000 for x in sys.stdin.read().split()); print(int(v[len(v)//2]), int(v[int(len(v)*0.99)-1]))')
    local pergb="—"
    if [ "$1" != bare ]; then
      ip netns exec "$NS_B" iperf3 -s -D -1 --logfile "$WORK/s4" >/dev/null
      sleep 0.3
      local t0 t1 bytes
      t0=$(cpu_ticks "${PIDS[@]}")
      bytes=$(ip netns exec "$NS_A" iperf3 -c "$dst" -b "$CPU_RATE" -t "$SECS" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bytes"])')
      t1=$(cpu_ticks "${PIDS[@]}")
      pergb=$(python3 -c "import os,sys; print('%.2f' % ((int(sys.argv[2]) - int(sys.argv[1])) / os.sysconf('SC_CLK_TCK') / (int(sys.argv[3]) / 1e9)))" "$t0" "$t1" "$bytes")
    fi
    echo "| $1 | $ab | $ba | $udp | $loss | $p50 | $p99 | $pergb |"
  )
}

echo "| path | TCP a→b Gb/s | TCP b→a Gb/s | UDP @$UDP_RATE delivered Gb/s | UDP loss % | ping p50 µs | ping p99 µs | CPU-s per GB @$CPU_RATE |"
echo "|---|---|---|---|---|---|---|---|"
for impl in "${IMPLS[@]}"; do
  one "$impl"
done
