#!/usr/bin/env bash
# Idle round trips (issue #18): the same two-namespace topology as netns-throughput.sh,
# nothing else on the tunnel, pings spaced as a person types: 300 at 20 ms and 40 at 500 ms.
# For each configuration, in one run: p50/p99 (µs), the added p50 over the bare veth, the
# two tunnel processes' context switches per round trip and their CPU while pinging every
# 500 ms (ms of CPU per second of wall time).
#
#   cargo build --release -p codervpn-nebridge
#   sudo benches/idle-latency.sh [CONFIG…]
#
# CONFIG: bare | ours | boringtun | wggo (Debian's) | wggo-current (built from source by
# tests/coder-go/build.sh) | ours-base (ours again from the binary in OURS_BASE, an earlier
# build, for a before/after in one run). Default: all but ours-base.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CONFIGS=("$@")
[ ${#CONFIGS[@]} -eq 0 ] && CONFIGS=(bare ours boringtun wggo wggo-current)
WGGO_CURRENT=${WGGO_CURRENT:-$HERE/../target/coder-go/wireguard-go}
export CODERVPN=${CODERVPN:-$HERE/../target/release/codervpn}

rtts() { # NS DST COUNT INTERVAL -> RTTs in µs, one per line
  ip netns exec "$1" ping -c "$3" -i "$4" -W 2 "$2" | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' \
    | python3 -c 'import sys; [print(int(float(x)*1000)) for x in sys.stdin.read().split()]'
}
pct() { python3 -c 'import sys; v=sorted(int(x) for x in sys.stdin.read().split()); p=float(sys.argv[1]); print(v[min(len(v)-1, int(len(v)*p))])' "$1"; }
# counters PIDS…: "ctxt_switches cpu_ticks" summed over the processes (every thread).
counters() {
  local cs=0 ticks=0 pid
  for pid in "$@"; do
    cs=$((cs + $(cat /proc/"$pid"/task/*/status | awk '/ctxt_switches/ {s+=$2} END {print s}')))
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$cs $ticks"
}

one() {
  (
    source "$HERE/../tests/netns/lib.sh"
    trap cleanup EXIT
    setup_hosts
    local dst=$TUN_B impl=$1
    case "$impl" in
      bare) dst=$VETH_B ;;
      ours) start_ours a; start_ours b ;;
      ours-base) CODERVPN=${OURS_BASE:?set OURS_BASE to an earlier codervpn binary}; start_ours a; start_ours b ;;
      boringtun) start_boringtun a; start_boringtun b ;;
      wggo) start_wggo a; start_wggo b ;;
      wggo-current) start_wggo a "$WGGO_CURRENT"; start_wggo b "$WGGO_CURRENT" ;;
      *) echo "unknown config $1" >&2; exit 2 ;;
    esac
    local pids=()
    [ "$impl" != bare ] && pids=("${PIDS[@]}")
    ip netns exec "$NS_A" ping -c 3 -i 0.2 -W 5 "$dst" >/dev/null
    local before after fast slow cs ticks hz
    hz=$(getconf CLK_TCK)
    before=$( [ ${#pids[@]} -gt 0 ] && counters "${pids[@]}" || echo "0 0")
    fast=$(rtts "$NS_A" "$dst" 300 0.02)
    after=$( [ ${#pids[@]} -gt 0 ] && counters "${pids[@]}" || echo "0 0")
    cs=$(( (${after% *} - ${before% *}) ))
    before=$after
    slow=$(rtts "$NS_A" "$dst" 40 0.5)
    after=$( [ ${#pids[@]} -gt 0 ] && counters "${pids[@]}" || echo "0 0")
    ticks=$(( ${after#* } - ${before#* } ))
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" \
      "$(echo "$fast" | pct 0.5)" "$(echo "$fast" | pct 0.99)" \
      "$(echo "$slow" | pct 0.5)" "$(echo "$slow" | pct 0.99)" \
      "$(python3 -c "print(round($cs / 300, 1))")" \
      "$(python3 -c "print(round($ticks * 1000 / $hz / 20, 1))")"
  )
}

echo "| config | 20 ms p50 µs | 20 ms p99 µs | 500 ms p50 µs | 500 ms p99 µs | ctx switches / RTT | CPU ms/s at 500 ms |"
echo "|---|---|---|---|---|---|---|"
for c in "${CONFIGS[@]}"; do
  one "$c"
done
