#!/usr/bin/env bash
# Failing fast when the tunnel cannot carry traffic (issue #14): `codervpn up` in host a,
# the testbed in host b; then b drops everything from a (TCP and UDP: the tailnet, DERP and
# direct paths all dead, no RST, no ICMP — as after a suspend behind a NAT that forgot us).
# A TCP connect to the agent fails with EHOSTUNREACH within 20 s instead of hanging: the
# tunnel answers with ICMPv6 unreachable once the peer has left packets unanswered for 5 s
# (no session yet; the kernel's SYN retry at 7 s gets it) or 12 s (a session the agent had
# started; the retry at 15 s) — the agent's own handshake initiations, which still reach a,
# do not count as answers. The Coder Connect
# marker still resolves within 100 ms.
#
# Needs root, iproute2, nftables, wireguard-tools, curl, dig, python3.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
setup_hosts

start_testbed --workspaces 1
AGENT_IP=$(json 'd["agents"][0]["ip"]')
start_up
# The agent must be a WireGuard peer before the paths die (its node comes through the
# coordinator a moment after `up` connects; a packet for an address no peer owns is
# dropped, not answered). The status document shows the peer's byte counters then.
for _ in $(seq 100); do
  ip netns exec "$NS_A" "$CODERVPN" status --json --socket "$WORK/status.sock" 2>/dev/null \
    | python3 -c 'import json,sys; a=json.load(sys.stdin)["workspaces"][0]["agents"][0]; sys.exit(a["rx_bytes"] is None)' \
    && PEER=1 && break
  sleep 0.1
done
[ -n "${PEER:-}" ] || fail "the agent never became a WireGuard peer"

ip netns exec "$NS_B" nft -f - <<NFT
table inet cvpndead {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr $VETH_A drop
  }
}
NFT

elapsed_ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# connect(2) itself, so the error is the kernel's: EHOSTUNREACH from our ICMPv6 error.
connect_errno() {
  ip netns exec "$NS_A" python3 -c '
import errno, socket, sys, time
t = time.monotonic()
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(60)
try:
    s.connect((sys.argv[1], 80)); print("connected", 0)
except OSError as e:
    print(errno.errorcode.get(e.errno, e), int((time.monotonic() - t) * 1000))
' "$1"
}
read -r ERR MS < <(connect_errno "$AGENT_IP")
[ "$ERR" = EHOSTUNREACH ] || fail "connect to a dead agent: $ERR after $MS ms"
[ "$MS" -lt 20000 ] || fail "connect to a dead agent took $MS ms"
echo "dead agent: connect failed with $ERR in $MS ms"
OUT=$(ip netns exec "$NS_A" curl -sS --max-time 60 "http://[$AGENT_IP]/" 2>&1) && fail "curl to a dead agent succeeded: $OUT"
echo "  curl: ${OUT#curl: }"

MARKER=is.coder--connect--enabled--right--now.coder
START=$(date +%s%N)
ANSWER=$(ip netns exec "$NS_A" dig +short +time=1 +tries=1 @fd60:627a:a42b::53 "$MARKER" AAAA)
MS=$(elapsed_ms "$START")
[ -n "$ANSWER" ] || fail "the marker does not resolve"
[ "$MS" -lt 100 ] || fail "the marker took $MS ms"
echo "marker $MARKER: $ANSWER in $MS ms (dig's own start-up included)"

ip netns exec "$NS_B" nft delete table inet cvpndead
stop_up || fail "up exited with an error"
echo "failfast ok"
