#!/usr/bin/env bash
# Round-trip time through the tunnel on the direct path vs through DERP vs bare, in
# network namespaces laid out as a real deployment (tests/netns/lib.sh setup_routed): the
# client (`codervpn up`, host a) behind a NAT router r, the testbed's server (and so its
# DERP relay) in host s, its simulated agents in host b. s's link has a one-way delay of
# DERP_DELAY_MS (default 10; lib.sh delay_server_link: netem on s's side only, or where the
# kernel has no netem a proxy delaying what the testbed sends over TCP), so every relayed
# round trip pays it twice (s -> b, s -> a) and the direct path a -> r -> b none.
#
# Pings go to a simulated agent's address through the TUN (ICMPv6 echo answered by the
# agent's smoltcp stack: each sample crosses WireGuard both ways), first once disco has
# made the path direct (UDP through r's NAT to b), then with b dropping UDP from r so
# WireGuard goes through the relay on s; and, for reference, bare pings from a to b and to
# s through the NAT (the latter shows the delay only with netem: the proxy delays TCP).
#
#   usage: benches/rtt.sh [CODERVPN_BINARY]   (default target/release/codervpn)
# Needs root, iproute2 (tc netem), nftables, wireguard-tools, iputils-ping, python3.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CODERVPN=${1:-$ROOT/target/release/codervpn}
COUNT=${COUNT:-500}
DERP_DELAY_MS=${DERP_DELAY_MS:-10}
source "$ROOT/tests/netns/lib.sh"
trap cleanup EXIT
setup_routed
if [ "$DERP_DELAY_MS" != 0 ]; then delay_server_link "$DERP_DELAY_MS"; fi

start_testbed --workspaces 1 --agent-netns "$NS_B"
AGENT_IP=$(json 'd["agents"][0]["ip"]')
start_up

rtt() {  # rtt LABEL ARGS...: COUNT pings 5 ms apart; loss, median, p99, min, max (ms)
  local label=$1
  shift
  ip netns exec "$NS_A" ping -c "$COUNT" -i 0.005 -W 1 "$@" | python3 -c '
import re, sys
label, count = sys.argv[1], int(sys.argv[2])
t = sorted(float(m) for m in re.findall(r"time=([0-9.]+) ms", sys.stdin.read()))
if not t:
    print("%-30s no replies" % label); sys.exit()
pct = lambda q: t[min(len(t) - 1, int(q * len(t)))]
print("%-30s loss %4.1f%% | median %7.3f  p99 %7.3f  min %7.3f  max %7.3f ms" % (
    label, 100.0 * (count - len(t)) / count, pct(0.5), pct(0.99), t[0], t[-1]))
' "$label" "$COUNT"
}

ip netns exec "$NS_A" ping -6 -c 3 -W 2 "$AGENT_IP" > /dev/null || true
wait_log "is direct via $PUB_B:" 30 || fail "never went direct"
echo "$(date -u +%FT%TZ) $(nproc) vCPU, load $(cut -d' ' -f1 /proc/loadavg), $COUNT pings each," \
  "server link one-way delay ${DERP_DELAY_MS} ms"
rtt "bare a -> b through the NAT" -4 "$PUB_B"
rtt "bare a -> s through the NAT" -4 "$PUB_S"
rtt "tunnel, direct UDP path" -6 "$AGENT_IP"

block_udp "$NS_B" "$PUB_R"
FROM=$(log_lines)
wait_log "is DERP" 30 "$FROM" || fail "no fallback to DERP"
# The agent still reaches the client directly (b only drops what comes in) until its own
# disco gives the path up; let it, so both directions go through the relay.
sleep "${SETTLE_S:-8}"
rtt "tunnel, via DERP relay on s" -6 "$AGENT_IP"
