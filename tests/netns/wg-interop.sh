#!/usr/bin/env bash
# wg-interop.sh IMPL_A IMPL_B: host a runs IMPL_A, host b runs IMPL_B (ours | wggo |
# boringtun). Checks, in both directions: ping, then a 100 MB TCP transfer whose SHA-256
# matches on both ends. Prints "interop ok" and exits 0 on success.
source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
MB=${MB:-100}

setup_hosts
for side in a b; do
  impl=$([ "$side" = a ] && echo "$1" || echo "$2")
  case "$impl" in
    ours) start_ours "$side" ;;
    wggo) start_wggo "$side" ;;
    boringtun) start_boringtun "$side" ;;
    *) echo "unknown implementation $impl" >&2; exit 2 ;;
  esac
done

# Garbage, truncated and oversized datagrams at both WireGuard ports: dropped, never fatal.
for target in "$VETH_A:$PORT_A" "$VETH_B:$PORT_B"; do
  ip netns exec "$NS_A" python3 -c '
import os, socket, sys
host, port = sys.argv[1].split(":")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in [0, 1, 3, 4, 31, 32, 147, 148, 149, 1500, 65000]:
    s.sendto(os.urandom(n), (host, int(port)))
for kind in [1, 2, 3, 4]:
    s.sendto(bytes([kind, 0, 0, 0]) + os.urandom(60), (host, int(port)))' "$target"
done

ip netns exec "$NS_A" ping -c 3 -i 0.2 -W 5 "$TUN_B" > "$WORK/ping-ab" || { cat "$WORK"/*.log >&2; echo "ping a->b failed" >&2; exit 1; }
ip netns exec "$NS_B" ping -c 3 -i 0.2 -W 5 "$TUN_A" > "$WORK/ping-ba" || { echo "ping b->a failed" >&2; exit 1; }
echo "ping ok both ways"

head -c "${MB}M" /dev/urandom > "$WORK/payload"
want=$(sha256sum "$WORK/payload" | cut -d' ' -f1)
transfer() { # transfer FROM_NS TO_NS TO_ADDR
  local port=$((20000 + RANDOM % 10000))
  ip netns exec "$2" python3 -c '
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(60)
c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print(h.hexdigest(), n)' "$port" > "$WORK/recv" &
  local server=$!
  # Connect once the receiver listens (not after a guessed delay).
  for _ in $(seq 200); do
    ip netns exec "$2" ss -Hltn "sport = :$port" | grep -q . && break
    sleep 0.05
  done
  ip netns exec "$1" python3 -c '
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
with open(sys.argv[3], "rb") as f:
    while True:
        b = f.read(1 << 16)
        if not b: break
        s.sendall(b)
s.close()' "$3" "$port" "$WORK/payload"
  wait "$server"
  read -r got bytes < "$WORK/recv"
  if [ "$got" != "$want" ]; then echo "checksum mismatch $1 -> $2: $got ($bytes bytes) vs $want" >&2; exit 1; fi
  echo "transfer $1 -> $2: $bytes bytes, sha256 ok"
}
transfer "$NS_A" "$NS_B" "$TUN_B"
transfer "$NS_B" "$NS_A" "$TUN_A"
# Our side stops cleanly on SIGINT and leaves no interface behind.
for side in a b; do
  impl=$([ "$side" = a ] && echo "$1" || echo "$2")
  [ "$impl" = ours ] || continue
  pid=${PIDS[$([ "$side" = a ] && echo 0 || echo $((${#PIDS[@]} - 1)))]}
  kill -INT "$pid"
  if ! wait "$pid"; then echo "codervpn on $side exited non-zero after SIGINT" >&2; cat "$WORK/$side-ours.log" >&2; exit 1; fi
  if ip -n "$(ns_of "$side")" link show "$(if_of "$side")" >/dev/null 2>&1; then
    echo "interface $(if_of "$side") still exists after SIGINT" >&2; exit 1
  fi
  echo "$side: stopped on SIGINT, interface removed"
done
echo "interop ok: $1 <-> $2"
