#!/usr/bin/env bash
# Direct paths over IPv6 only: the hosts share nothing but IPv6 on their veth (no IPv4
# address at all). The testbed listens on its IPv6 address, so REST, the tailnet websocket,
# DERP and STUN run over IPv6 with bracketed literals in every URL and map entry; the
# client advertises its IPv6 endpoint and STUN latency, and the path to the agent goes
# direct over IPv6.
#
#   host a (client): fd00:201::1    host b (server): codervpn testbed serve --listen [fd00:201::2]:8080
#
# Needs root, iproute2, wireguard-tools (lib.sh makes keys), curl, python3.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
setup_hosts
A6=fd00:201::1
B6=fd00:201::2
ip -n "$NS_A" addr flush dev "${NS_PREFIX}va"
ip -n "$NS_B" addr flush dev "${NS_PREFIX}vb"
ip -n "$NS_A" addr add "$A6/64" dev "${NS_PREFIX}va" nodad
ip -n "$NS_B" addr add "$B6/64" dev "${NS_PREFIX}vb" nodad
ip -n "$NS_A" -4 addr show dev "${NS_PREFIX}va" | grep -q inet && { echo "FAIL: IPv4 left on a"; exit 1; }

TESTBED_ADDR="[$B6]" start_testbed --workspaces 1
AGENT_IP=$(json 'd["agents"][0]["ip"]')
[[ "$(json 'd["url"]')" == "http://[$B6]:8080"* ]] || { echo "FAIL: testbed url $(json 'd["url"]')"; exit 1; }
start_up
echo "joined over IPv6: $(json 'd["url"]')"

ip netns exec "$NS_A" ping -6 -c 3 -W 2 "$AGENT_IP" > /dev/null || true
wait_log "is direct via \[$B6\]:" 20 || fail "the path never went direct over IPv6"
echo "direct: $(sed 's/\x1b\[[0-9;]*m//g' "$WORK/up.log" | grep -o "is direct via [^ ]*" | tail -1)"
for _ in $(seq 20); do advertised | grep -q "\"\[$A6\]:[0-9]*\"" && break; sleep 0.1; done
advertised | grep -q "\"\[$A6\]:[0-9]*\"" || fail "the client did not advertise [$A6]: $(advertised)"
echo "client advertised $(advertised)"
# STUN ran over IPv6 to the testbed's STUN node: the published latency is keyed 999-v6.
testbed_log | grep "client node" | grep -q '"999-v6"' \
  || fail "no IPv6 STUN latency published: $(testbed_log | grep 'client node' | tail -1)"
echo "STUN over IPv6: $(testbed_log | grep 'client node' | tail -1 | grep -o 'latency_keys={[^}]*}')"

# The page comes over the direct path: a's TCP to the testbed (DERP) is cut meanwhile.
block_derp "$NS_A" "$B6"
PAGE=$(ip netns exec "$NS_A" curl -s -m 10 -g "http://[$AGENT_IP]/") || fail "no page over the tunnel with DERP cut"
unblock_derp "$NS_A"
echo "$PAGE" | grep -q "Hello from agent" || fail "unexpected page: $PAGE"
echo "page: $(echo "$PAGE" | grep -o 'Hello from agent[^<]*')"
stop_up || fail "up exited with an error"
echo "direct6 ok"
