#!/usr/bin/env bash
# Direct paths between namespaces (issue #8): `codervpn up` in host a reaches an agent of
# the testbed in host b over DERP first, then directly over UDP across the veth; when UDP
# between the hosts is blocked mid-transfer the path falls back to DERP without breaking
# the TCP stream, and when it is unblocked the path goes direct again. A wake rebinds the
# socket; an address added to a's link is published at once (network change monitor).
#
#   host a (client): codervpn up --url http://10.201.0.2:8080  (TUN ${NS_PREFIX}t)
#   host b (server): codervpn testbed serve --listen 10.201.0.2:8080 (agents on UDP *:port)
#
# Needs root, iproute2, nftables, wireguard-tools (lib.sh makes keys), python3.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
setup_hosts

up_direct_to_one_agent

status_says p2p
echo "status: p2p"

# Block UDP from a to b mid-stream: pings and WireGuard over the veth die; DERP (TCP) lives.
derp_fallback_and_back "$AGENT_IP" "$NS_B" "$VETH_A" "$VETH_B"

# Wake by hand (what `up` does after a suspend): the tunnel closes its UDP socket, binds a
# new one on the same port, re-STUNs and re-probes; traffic keeps flowing.
FROM=$(log_lines)
kill -USR1 "$UP_PID"
wait_log "tunnel woke" 10 "$FROM" || fail "no wake on SIGUSR1"
wait_log "UDP socket rebound" 10 "$FROM" || fail "the wake did not rebind the UDP socket"
echo "wake: $(tail -n +"$((FROM + 1))" "$WORK/up.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'UDP socket rebound.*')"
# A second wake right after: answered, but no second rebind within 5 s (upstream's debounce).
FROM=$(log_lines)
kill -USR1 "$UP_PID"
wait_log "not rebinding again" 5 "$FROM" || fail "a second wake within 5 s was not debounced"
tail -n +"$((FROM + 1))" "$WORK/up.log" | grep -q "UDP socket rebound" && fail "a second wake within 5 s rebound the socket again"
echo "second wake within 5 s: answered, not rebound"
ip netns exec "$NS_A" ping -6 -c 5 -i 0.2 -W 2 "$AGENT_IP" > "$WORK/ping.txt" \
  || fail "no pings after the wake: $(cat "$WORK/ping.txt")"
echo "after the wake: $(grep -o '[0-9]* received' "$WORK/ping.txt")"
status_says p2p
echo "status after the wake: p2p"

# A network change: a second address on a's link. The network change monitor (netlink)
# sees it and the client publishes it within 2 s, without waiting for its 20-second poll;
# removed again, it is withdrawn as quickly.
NEW_ADDR=10.201.0.77
published() { advertised | grep -q "\"$NEW_ADDR:[0-9]*\""; }
ip -n "$NS_A" addr add "$NEW_ADDR/24" dev "${NS_PREFIX}va"
for _ in $(seq 20); do published && break; sleep 0.1; done
published || fail "the new address $NEW_ADDR was not published within 2 s: $(advertised)"
echo "network change: $(advertised)"
ip -n "$NS_A" addr del "$NEW_ADDR/24" dev "${NS_PREFIX}va"
for _ in $(seq 20); do published || break; sleep 0.1; done
published && fail "the removed address $NEW_ADDR is still published after 2 s: $(advertised)"
echo "withdrawn: $(advertised)"

stop_up || fail "up exited with an error"
echo "direct ok"
