#!/usr/bin/env bash
# Direct paths between namespaces (issue #8): `codervpn up` in host a reaches an agent of
# the testbed in host b over DERP first, then directly over UDP across the veth; when UDP
# between the hosts is blocked mid-transfer the path falls back to DERP without breaking
# the TCP stream, and when it is unblocked the path goes direct again.
#
#   host a (client): codervpn up --url http://10.201.0.2:8080  (TUN ${NS_PREFIX}t)
#   host b (server): codervpn testbed serve --listen 10.201.0.2:8080 (agents on UDP *:port)
#
# Needs root, iproute2, nftables, wireguard-tools (lib.sh makes keys), python3.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
setup_hosts

IFACE="${NS_PREFIX}t"
start_testbed --workspaces 1
URL=$(json 'd["url"]')
TOKEN=$(json 'd["token"]')
AGENT_IP=$(json 'd["agents"][0]["ip"]')

ip netns exec "$NS_A" env CODERVPN_LOG=info "$CODERVPN" up --url "$URL" --token "$TOKEN" \
  --allow-http --interface "$IFACE" --status-socket "$WORK/status.sock" \
  > "$WORK/up.out" 2> "$WORK/up.log" &
UP_PID=$!
PIDS+=($UP_PID)
for _ in $(seq 600); do grep -q "connected; Ctrl-C" "$WORK/up.log" && break; kill -0 $UP_PID 2>/dev/null || break; sleep 0.1; done
grep -q "connected; Ctrl-C" "$WORK/up.log" || { cat "$WORK/up.log"; echo "up did not connect"; exit 1; }

fail() { echo "FAIL: $*"; echo "--- up.log"; tail -60 "$WORK/up.log"; echo "--- testbed.log"; tail -30 "$WORK/testbed.log"; exit 1; }

# wait_log PATTERN SECONDS [FROM_LINE]: waits for PATTERN in up.log after line FROM_LINE.
wait_log() {
  local pattern=$1 secs=$2 from=${3:-0}
  for _ in $(seq $((secs * 10))); do
    tail -n +"$((from + 1))" "$WORK/up.log" | grep -q "$pattern" && return 0
    sleep 0.1
  done
  return 1
}
lines() { wc -l < "$WORK/up.log"; }

# Traffic starts the WireGuard session; disco finds the veth path.
ip netns exec "$NS_A" ping -6 -c 3 -W 2 "$AGENT_IP" > /dev/null || true
wait_log "is direct via $VETH_B:" 20 || fail "the path never went direct"
echo "direct: $(grep -o "is direct via [^ ]*" "$WORK/up.log" | tail -1)"

# The 5-second status update carries it: `codervpn status` says p2p.
for _ in $(seq 30); do
  ip netns exec "$NS_A" "$CODERVPN" status --socket "$WORK/status.sock" > "$WORK/status.txt" 2>&1 || true
  grep -q "p2p" "$WORK/status.txt" && break
  sleep 0.5
done
grep -q "p2p" "$WORK/status.txt" || fail "status does not say p2p: $(cat "$WORK/status.txt")"
echo "status: p2p"

# A slow TCP stream through the agent's echo service for the rest of the test: 64 KiB
# every 100 ms, checked end to end.
ip netns exec "$NS_A" python3 - "$AGENT_IP" > "$WORK/stream.out" 2>&1 <<'PY' &
import hashlib, os, socket, sys, threading, time
data = os.urandom(64 * 1024 * 300)  # ~30 s at 64 KiB / 100 ms
s = socket.create_connection((sys.argv[1], 7), timeout=60)
def send():
    for i in range(0, len(data), 64 * 1024):
        s.sendall(data[i:i + 64 * 1024]); time.sleep(0.1)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send); t.start()
got = bytearray()
while True:
    b = s.recv(1 << 16)
    if not b: break
    got += b
t.join()
assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), (len(got), len(data))
print("stream ok: %d bytes sha256 match" % len(got))
PY
STREAM=$!
PIDS+=($STREAM)
sleep 2

# Block UDP from a to b: pings and WireGuard over the veth die; DERP (TCP) lives.
ip netns exec "$NS_B" nft -f - <<NFT
table inet cvpnblock {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr $VETH_A meta l4proto udp drop
  }
}
NFT
FROM=$(lines)
wait_log "is DERP" 20 "$FROM" || fail "no fallback to DERP with UDP blocked"
echo "fallback to DERP with UDP blocked"
sleep 3

ip netns exec "$NS_B" nft delete table inet cvpnblock
FROM=$(lines)
wait_log "is direct via $VETH_B:" 30 "$FROM" || fail "the path did not go direct again"
echo "direct again after unblocking"

wait "$STREAM" || fail "the stream broke: $(cat "$WORK/stream.out")"
cat "$WORK/stream.out"

kill -INT "$UP_PID"
for _ in $(seq 100); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
wait "$UP_PID" || fail "up exited with an error"
echo "direct ok"
