#!/usr/bin/env bash
# Direct paths when both ends are behind NATs (issue #8): the client behind router r, the
# agents behind router r2, the testbed's server s on the "internet" between them (lib.sh
# setup_routed agent-nat):
#
#   a 10.203.0.2 -- r (NAT, 10.204.0.1) -- s 10.204.0.2 -- r2 (NAT, 10.204.0.4) -- b 10.205.0.2
#
# Neither side's own address is reachable from the other, so the only direct path is
# between the two NATs' public mappings. First, with the testbed's STUN server off, no
# one learns a mapping and the path must stay on DERP; then, with STUN on, both sides
# advertise what the STUN server saw, disco pings from both sides open the NATs (the
# agent pings back on the client's call-me-maybe) and the path goes direct via r2.
#
# Needs root, iproute2, nftables, wireguard-tools (lib.sh makes keys), python3.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
setup_routed agent-nat

ping_agent() {  # ping_agent LABEL COUNT: pings through the tunnel, prints "LABEL: N received"
  ip netns exec "$NS_A" ping -6 -c "$2" -i 0.3 -W 5 "$AGENT_IP" > "$WORK/ping.txt" 2>&1 \
    || fail "pings to the agent failed: $(cat "$WORK/ping.txt")"
  echo "$1: $(grep -o '[0-9]* received' "$WORK/ping.txt")"
}

# 1. Without STUN: DERP works, a direct path cannot form.
start_testbed --workspaces 1 --agent-netns "$NS_B" --no-stun
AGENT_IP=$(json 'd["agents"][0]["ip"]')
start_up
ping_agent "no STUN, over DERP" 3
sleep 12
grep -q "is direct via" "$WORK/up.log" && fail "went direct without knowing a public address"
echo "no STUN: still on DERP after 12 s; client advertised $(advertised)"
stop_up || fail "up exited with an error"
stop_testbed

# 2. With STUN: both mappings are advertised and the NATs are punched through.
start_testbed --workspaces 1 --agent-netns "$NS_B"
AGENT_IP=$(json 'd["agents"][0]["ip"]')
start_up
ping_agent "STUN, first pings" 3
wait_log "is direct via $PUB_R2:" 30 || fail "the path never went direct through both NATs"
echo "direct: $(grep -o "is direct via [^ ]*" "$WORK/up.log" | tail -1)"
advertised | grep -q "\"$PUB_R:[0-9]*\"" || fail "the client did not advertise r's mapping: $(advertised)"
echo "client advertised $(advertised)"
ping_agent "over the punched path" 5
# The punched path itself carries them: a's TCP to the testbed (DERP) cut, pings still pass.
block_derp "$NS_A" "$TESTBED_ADDR"
ping_agent "with DERP cut" 5
unblock_derp "$NS_A"

stop_up || fail "up exited with an error"
echo "nat-both ok"
