#!/usr/bin/env bash
# A wake after a suspend that left the tailnet and DERP connections dead but open (the
# server, or a NAT between, forgot them; no RST, no FIN) — issue #14. `codervpn up` in host
# a reaches the agent in host b over DERP only (UDP blocked); then b silently drops every
# packet of the connections a has open to it, while new connections pass. A wake (SIGUSR1 to
# `up`; after a real suspend the engine wakes itself the same way, from the clocks) probes
# both: within seconds the DERP connection and the coordinator's websocket are found silent
# and dialled again, and the agent answers again — without waiting for TCP or the 30 s
# keep-alive.
#
# Needs root, iproute2, nftables, wireguard-tools, iproute2's ss, python3.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
setup_hosts

start_testbed --workspaces 1
AGENT_IP=$(json 'd["agents"][0]["ip"]')
block_udp "$NS_B" "$VETH_A"
block_udp "$NS_A" "$VETH_B"
start_up
ip netns exec "$NS_A" ping -6 -c 3 -W 3 "$AGENT_IP" > "$WORK/ping.txt" || fail "no ping over DERP: $(cat "$WORK/ping.txt")"
echo "over DERP: $(grep -o '[0-9]* received' "$WORK/ping.txt")"

# The connections a has open to the testbed (the tailnet websocket and DERP) go silent.
PORTS=$(ip netns exec "$NS_A" ss -Htn state established dst "$VETH_B" dport = :8080 | awk '{print $3}' | sed 's/.*://' | paste -sd, -)
[ -n "$PORTS" ] || fail "no connections to the testbed"
COUNT=$(echo "$PORTS" | tr ',' '\n' | wc -l)
[ "$COUNT" -ge 2 ] || fail "want the tailnet and DERP connections, found ports $PORTS"
ip netns exec "$NS_B" nft -f - <<NFT
table inet cvpnstale {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr $VETH_A tcp sport { $PORTS } drop
  }
}
NFT
echo "silenced $COUNT connections (ports $PORTS)"
FROM=$(log_lines)
START=$(date +%s%N)
kill -USR1 "$UP_PID"
wait_log "tunnel woke" 10 "$FROM" || fail "no wake"
wait_log "DERP connection lost" 6 "$FROM" || fail "the silent DERP connection was not found within 6 s of the wake"
wait_log "tailnet connection lost" 6 "$FROM" || fail "the silent tailnet connection was not found within 6 s of the wake"
MS=$(( ($(date +%s%N) - START) / 1000000 ))
tail -n +"$((FROM + 1))" "$WORK/up.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -o "DERP connection lost.*no pong[^ ]* [^ ]* [^ ]*\|tailnet connection lost.*within [0-9.]*s" | head -2 | sed 's/^/  /'
echo "both found silent and redialled within $MS ms of the wake"
ip netns exec "$NS_A" ping -6 -c 3 -W 3 "$AGENT_IP" > "$WORK/ping.txt" || fail "no ping after the wake: $(cat "$WORK/ping.txt")"
echo "after the wake: $(grep -o '[0-9]* received' "$WORK/ping.txt") over fresh connections"
ip netns exec "$NS_A" "$CODERVPN" metrics --socket "$WORK/status.sock" > "$WORK/metrics.txt"
grep -q '^codervpn_derp_reconnects_total{region_id="999".*} 1$' "$WORK/metrics.txt" || fail "metrics: $(grep derp "$WORK/metrics.txt")"
grep -q '^codervpn_control_redials_total 1$' "$WORK/metrics.txt" || fail "metrics: $(grep control "$WORK/metrics.txt")"
echo "metrics: one DERP reconnect, one tailnet redial"
stop_up || fail "up exited with an error"
echo "wake ok"
