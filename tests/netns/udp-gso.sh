#!/usr/bin/env bash
# udp-gso.sh: `codervpn wg up` on both hosts; UDP datagrams cross the tunnel whole, checked
# byte by byte (tests/netns/udp_stream.py), two ways:
# - sent with UDP_SEGMENT (as QUIC stacks send): host a's TUN hands the tunnel UDP GSO
#   packets (USO, Linux >= 6.2), which it cuts into datagrams; the log shows gso=5 reads;
# - sent one datagram per call: host b writes runs of them to its TUN as UDP GSO frames,
#   so b's TUN counts fewer packets than datagrams arrived.
# Prints "udp-gso ok".
source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
HERE=$(cd "$(dirname "$0")" && pwd)
N=${N:-3000}

setup_hosts
CODERVPN_LOG=info,codervpn_engine::device=trace start_ours a
start_ours b
ip netns exec "$NS_A" ping -c 2 -W 5 "$TUN_B" >/dev/null || { cat "$WORK"/*.log >&2; echo "no tunnel" >&2; exit 1; }

run() { # run LABEL SENDER_ARGS... -> checks and prints the receiver's line
  local label=$1 port=$((30000 + RANDOM % 10000)); shift
  ip netns exec "$NS_B" python3 "$HERE/udp_stream.py" recv "$TUN_B" "$port" > "$WORK/recv-$label" &
  local rx=$!
  for _ in $(seq 100); do grep -q listening "$WORK/recv-$label" && break; sleep 0.05; done
  ip netns exec "$NS_A" python3 "$HERE/udp_stream.py" send "$TUN_B" "$port" "$N" 1200 "$@" >/dev/null
  wait "$rx"
  local line; line=$(tail -1 "$WORK/recv-$label")
  echo "$label: $line"
  read -r _ got _ intact _ sizes <<< "$line"
  if [ "$got" != "$intact" ]; then echo "$label: $((got - intact)) datagrams arrived damaged" >&2; exit 1; fi
  if [ "$sizes" != "600,1200" ]; then echo "$label: datagram sizes $sizes, want 600,1200" >&2; exit 1; fi
  # Paced, small and local: nothing should be lost; allow 1% for a busy machine.
  if [ "$got" -lt $((N * 99 / 100)) ]; then echo "$label: only $got of $N datagrams arrived" >&2; exit 1; fi
}


run gso --gso
n=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/a-ours.log" | grep -c 'TUN read.*gso=5' || true)
echo "a's TUN handed over $n UDP GSO packets"
[ "$n" -gt 0 ] || { echo "no UDP GSO packet was read from a's TUN (USO not granted?)" >&2; grep -m3 "offload" "$WORK/a-ours.log" >&2; exit 1; }

before=$(link_packets "$NS_B" "$(if_of b)" rx)
run plain
after=$(link_packets "$NS_B" "$(if_of b)" rx)
written=$((after - before))
got=$(tail -1 "$WORK/recv-plain" | cut -d' ' -f2)
echo "b's TUN took $written writes for $got datagrams"
[ "$written" -lt "$got" ] || { echo "b wrote every datagram alone: no UDP coalescing" >&2; exit 1; }
echo "udp-gso ok"
