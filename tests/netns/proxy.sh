#!/usr/bin/env bash
# `codervpn up` reaching a deployment only through an HTTP proxy we did not write
# (tinyproxy): host a has no route to host b, only to the proxy host p between them, and
# `HTTP_PROXY` names the proxy. The REST calls (reqwest), the tailnet websocket and the
# DERP relay connection (our HTTP CONNECT client) all go through it; the agent answers
# pings and serves its page by name over DERP. A proxy that refuses CONNECT makes `up`
# fail with a message that names the proxy and its answer.
#
#   host a (client):  10.206.0.1 ── 10.206.0.2 host p (tinyproxy :3128, no forwarding)
#   host b (testbed): 10.207.0.2 ── 10.207.0.1 host p
#
# Needs root, iproute2, tinyproxy, dnsutils (dig), curl, python3.

source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
NS_P=$NS_R   # cleanup removes it
A_IP=10.206.0.1
P_A=10.206.0.2
P_B=10.207.0.1
B_IP=10.207.0.2
for ns in "$NS_A" "$NS_P" "$NS_B"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
own_resolv_conf "$NS_A"
ip link add "${NS_PREFIX}ap" netns "$NS_A" type veth peer name "${NS_PREFIX}pa" netns "$NS_P"
ip link add "${NS_PREFIX}bp" netns "$NS_B" type veth peer name "${NS_PREFIX}pb" netns "$NS_P"
ip -n "$NS_A" addr add "$A_IP/24" dev "${NS_PREFIX}ap"
ip -n "$NS_P" addr add "$P_A/24" dev "${NS_PREFIX}pa"
ip -n "$NS_P" addr add "$P_B/24" dev "${NS_PREFIX}pb"
ip -n "$NS_B" addr add "$B_IP/24" dev "${NS_PREFIX}bp"
for l in "$NS_A ${NS_PREFIX}ap" "$NS_P ${NS_PREFIX}pa" "$NS_P ${NS_PREFIX}pb" "$NS_B ${NS_PREFIX}bp"; do
  set -- $l; ip -n "$1" link set "$2" up
done
ip netns exec "$NS_P" sysctl -qw net.ipv4.ip_forward=0

TESTBED_NS=$NS_B TESTBED_ADDR=$B_IP start_testbed --workspaces 1
AGENT_IP=$(json 'd["agents"][0]["ip"]')
AGENT_FQDN=$(json 'd["agents"][0]["fqdn"][1]')
ip netns exec "$NS_A" curl -s -m 2 "http://$B_IP:8080/" > /dev/null \
  && { echo "FAIL: host a reaches the testbed without the proxy"; exit 1; }
echo "host a cannot reach $B_IP:8080 directly"

# tinyproxy: CONNECT allowed to the testbed's port only, clients from a's link only.
start_tinyproxy() {  # start_tinyproxy CONNECT_PORT
  cat > "$WORK/tinyproxy.conf" <<CONF
Port 3128
Listen $P_A
Timeout 60
MaxClients 64
Allow 10.206.0.0/24
ConnectPort $1
LogLevel Connect
CONF
  ip netns exec "$NS_P" tinyproxy -d -c "$WORK/tinyproxy.conf" > "$WORK/tinyproxy.log" 2>&1 &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  for _ in $(seq 50); do
    ip netns exec "$NS_A" bash -c "exec 3<>/dev/tcp/$P_A/3128" 2>/dev/null && return 0
    sleep 0.1
  done
  cat "$WORK/tinyproxy.log"; echo "FAIL: tinyproxy did not start"; exit 1
}
start_tinyproxy 8080

export HTTP_PROXY="http://$P_A:3128"
start_up
CONNECTS=$(grep -c "CONNECT $B_IP:8080" "$WORK/tinyproxy.log" || true)
echo "connected through the proxy ($CONNECTS CONNECT tunnels so far)"
grep -q "joined the tailnet" "$WORK/up.log" || fail "no tailnet join in up.log"
grep -q "connecting to http://$B_IP:8080/ through proxy http://$P_A:3128" "$WORK/up.log" \
  || fail "up did not say it goes through the proxy"
# The relay's latency was measured through the proxy too (no direct route to it).
sed 's/\x1b\[[0-9;]*m//g' "$WORK/up.log" | grep "DERP home region" | grep -q "latencies=\[(999," \
  || fail "the relay was not measured through the proxy"
echo "relay latency measured through the proxy"

ip netns exec "$NS_A" ping -6 -c 3 -i 0.3 -W 3 "$AGENT_IP" > "$WORK/ping.txt" \
  || fail "no pings to the agent over DERP through the proxy: $(cat "$WORK/ping.txt")"
echo "ping: $(grep -o '[0-9]* received' "$WORK/ping.txt")"
# The name resolves through the in-tunnel resolver (no systemd-resolved here: ask it).
RESOLVED=$(ip netns exec "$NS_A" dig +short +time=3 @fd60:627a:a42b::53 AAAA "$AGENT_FQDN")
[ "$RESOLVED" = "$AGENT_IP" ] || fail "$AGENT_FQDN resolved to '$RESOLVED', want $AGENT_IP"
PAGE=$(ip netns exec "$NS_A" curl -s -m 10 --noproxy '*' -g "http://[$RESOLVED]/") \
  || fail "no page from $AGENT_FQDN"
echo "$PAGE" | grep -q "Hello from agent" || fail "unexpected page: $PAGE"
echo "page by name: $(echo "$PAGE" | grep -o 'Hello from agent[^<]*')"
# Both the websocket and the relay went through CONNECT (REST is plain HTTP, proxied as such).
CONNECTS=$(grep -c "CONNECT $B_IP:8080" "$WORK/tinyproxy.log" || true)
[ "$CONNECTS" -ge 2 ] || fail "want ≥ 2 CONNECT tunnels (websocket, DERP), tinyproxy saw $CONNECTS: $(cat "$WORK/tinyproxy.log")"
grep -q "GET http://$B_IP:8080/api/v2/" "$WORK/tinyproxy.log" \
  || fail "the REST calls did not go through the proxy: $(cat "$WORK/tinyproxy.log")"
echo "proxy log: $CONNECTS CONNECT tunnels, REST requests proxied"
stop_up || fail "up exited with an error"

# A proxy that refuses CONNECT to the testbed's port: `up` says so at once, naming the proxy
# and its answer (and goes on retrying, as the Go tunnel does for a dial error, until its
# start deadline; not waited for here).
kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true
start_tinyproxy 443
: > "$WORK/up.log"
ip netns exec "$NS_A" "$CODERVPN" up --url "$(json 'd["url"]')" \
  --token "$(json 'd["token"]')" --allow-http --interface "${NS_PREFIX}t" \
  > "$WORK/up.out" 2> "$WORK/up.log" &
UP_PID=$!
PIDS+=("$UP_PID")
wait_log "proxy http://$P_A:3128 refused CONNECT $B_IP:8080: 403" 10 \
  || fail "no error naming the proxy's refusal within 10 s"
echo "refused: $(sed 's/\x1b\[[0-9;]*m//g' "$WORK/up.log" | grep -o "proxy http://[^ ]* refused CONNECT [^ ]* 403" | head -1)"
# Ctrl-C while it is still trying: `up` gives up at once and leaves nothing behind.
kill -INT "$UP_PID"
for _ in $(seq 30); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$UP_PID" 2>/dev/null && fail "up did not stop within 3 s of SIGINT while connecting"
wait "$UP_PID" || fail "up exited with an error after SIGINT while connecting"
grep -q "interrupted while connecting" "$WORK/up.log" || fail "up did not say it was interrupted"
ip -n "$NS_A" link show "${NS_PREFIX}t" >/dev/null 2>&1 && fail "the TUN interface was left behind"
echo "SIGINT while connecting: stopped at once, TUN removed"
echo "proxy ok"
