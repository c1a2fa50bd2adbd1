#!/usr/bin/env bash
# Direct paths through a NAT (issue #8): the client is behind a masquerading router, the
# testbed's server and the agents are separate hosts on the "internet" (lib.sh
# setup_routed):
#
#   host a (client, LAN 10.203.0.2): codervpn up --url http://10.204.0.2:8080
#   host r (router): NAT, public address 10.204.0.1
#   host s (server, 10.204.0.2): codervpn testbed serve --agent-netns <b>
#   host b (agents, 10.204.0.3): the simulated agents, on UDP *:port
#
# The client reaches the agent over DERP (with UDP from r blocked at b), then directly once
# UDP is let through (disco from a, through r's NAT, to b's advertised address); the client
# has advertised the address r's NAT gave it, learned from the testbed's STUN server; a TCP
# stream through the agent survives b dropping UDP from r's public address (the path falls
# back to DERP) and the path goes direct again once it is let through.
#
# Needs root, iproute2, nftables, wireguard-tools (lib.sh makes keys), python3.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
setup_routed

start_testbed --workspaces 1 --agent-netns "$NS_B"
AGENT_IP=$(json 'd["agents"][0]["ip"]')
STUN=$(json 'd["stun"]')
[ "${STUN%:*}" = "$PUB_S" ] || fail "the STUN server is not on s: $STUN"
# First over DERP only: b drops UDP from r from the start, so no direct path can form; the
# agent answers through the relay on s.
block_udp "$NS_B" "$PUB_R"
start_up
ip netns exec "$NS_A" ping -6 -c 3 -i 0.5 -W 5 "$AGENT_IP" > "$WORK/ping.txt" \
  || fail "no pings over DERP: $(cat "$WORK/ping.txt")"
grep -q "is direct via" "$WORK/up.log" && fail "went direct with UDP blocked"
echo "ping over DERP: $(grep -o '[0-9]* packets transmitted, [0-9]* received' "$WORK/ping.txt")"

# Then direct: disco finds the path through the NAT to b's own address — b's, not s's:
# the agents really are another host.
FROM=$(log_lines)
unblock_udp "$NS_B"
wait_log "is direct via $PUB_B:" 30 "$FROM" || fail "the path never went direct to b"
echo "direct: $(grep -o "is direct via [^ ]*" "$WORK/up.log" | tail -1)"

# The NAT'd path carries traffic: pings over the direct path.
ip netns exec "$NS_A" ping -6 -c 5 -i 0.2 -W 2 "$AGENT_IP" > "$WORK/ping.txt" \
  || fail "no pings over the direct path: $(cat "$WORK/ping.txt")"
echo "ping over the NAT'd direct path: $(grep -o '[0-9]* received' "$WORK/ping.txt")"
# ... and it is the direct path that carries them: with a's TCP to the testbed (DERP, the
# coordinator) dropped, pings still get through.
block_derp "$NS_A" "$TESTBED_ADDR"
ip netns exec "$NS_A" ping -6 -c 5 -i 0.2 -W 2 "$AGENT_IP" > "$WORK/ping.txt" \
  || fail "no pings with DERP cut: the path was not direct: $(cat "$WORK/ping.txt")"
unblock_derp "$NS_A"
echo "with DERP cut: $(grep -o '[0-9]* received' "$WORK/ping.txt")"

# The client learned r's public address from STUN and advertised it.
for _ in $(seq 100); do
  advertised | grep -q "\"$PUB_R:[0-9]*\"" && break
  sleep 0.1
done
advertised | grep -q "\"$PUB_R:[0-9]*\"" \
  || fail "the client never advertised its NAT address $PUB_R: $(advertised)"
echo "client advertised its STUN address: $(advertised)"

# b drops UDP from r's public address mid-stream: the NAT'd path dies, DERP (TCP to s) lives.
derp_fallback_and_back "$AGENT_IP" "$NS_B" "$PUB_R" "$PUB_B"

stop_up || fail "up exited with an error"
echo "nat ok"
