#!/usr/bin/env bash
# `codervpn up` in a network namespace against the testbed in another one: the
# interface gets what the tunnel asked for, workspace names resolve through the
# in-tunnel resolver with dig/kdig (tools we did not write), an agent serves its page and
# echoes 10 MB over the TUN, `codervpn status` shows the agents, and after SIGINT nothing
# is left behind.
#
#   host a (client): codervpn up --url http://10.201.0.2:8080  (TUN ${NS_PREFIX}t)
#   host b (server): codervpn testbed serve --listen 10.201.0.2:8080
#
# Needs root, iproute2, wireguard-tools (lib.sh makes keys), dnsutils (dig), knot-dnsutils
# (kdig), curl, python3; minisign for the compat modes.
#
#   usage: up.sh [embedded|compat-daemon|compat-dylib]
# The compat modes sign our own daemon binary (or engine library, $CODERVPN_LIB) with the
# minisign CLI, have the testbed publish it under /bin/, and let `up` download, verify
# and run it.

source "$(dirname "$0")/lib.sh"
MODE=${1:-embedded}
trap cleanup EXIT
setup_hosts

PUBLISH=()
UP_MODE=(--mode "$MODE")
if [ "$MODE" != embedded ]; then
  case "$MODE" in
    compat-daemon) ART="$CODERVPN"; NAME=coder-linux-amd64 ;;
    compat-dylib) ART="${CODERVPN_LIB:-$(dirname "$CODERVPN")/libcodervpn_engine.so}"; NAME=coder-vpn-linux-amd64.so ;;
    *) echo "unknown mode $MODE"; exit 2 ;;
  esac
  minisign -G -W -p "$WORK/mini.pub" -s "$WORK/mini.key" >/dev/null
  cp "$ART" "$WORK/$NAME"
  minisign -S -s "$WORK/mini.key" -m "$WORK/$NAME" -x "$WORK/$NAME.minisig" \
    -t "codervpn-artifact file=$NAME version=2.24.3 platform=linux-x86_64" >/dev/null
  PUBLISH=(--publish "$NAME=$WORK/$NAME" --publish "$NAME.minisig=$WORK/$NAME.minisig")
  UP_MODE+=(--compat-key "$WORK/mini.pub" --cache-dir "$WORK/cache" --compat-max-mib 1024)
fi

IFACE="${NS_PREFIX}t"
start_testbed --workspaces 2 "${PUBLISH[@]}"
URL=$(json 'd["url"]')
TOKEN=$(json 'd["token"]')
AGENT_IP=$(json 'd["agents"][0]["ip"]')
AGENT_FQDN=$(json 'd["agents"][0]["fqdn"][1]')      # main.dev1.me.coder.
WS_FQDN=$(json 'd["agents"][0]["fqdn"][0]')         # dev1.coder.
OWNER_FQDN=$(json 'd["agents"][0]["fqdn"][2]')      # main.dev1.testy.coder.
echo "testbed at $URL; agent $AGENT_FQDN = $AGENT_IP"

ip netns exec "$NS_A" env CODERVPN_LOG=info "$CODERVPN" up --url "$URL" --token "$TOKEN" \
  --allow-http --interface "$IFACE" --status-socket "$WORK/status.sock" "${UP_MODE[@]}" \
  > "$WORK/up.out" 2> "$WORK/up.log" &
UP_PID=$!
PIDS+=($UP_PID)
for _ in $(seq 600); do grep -q "connected; Ctrl-C" "$WORK/up.log" && break; kill -0 $UP_PID 2>/dev/null || break; sleep 0.1; done
grep -q "connected; Ctrl-C" "$WORK/up.log" || { cat "$WORK/up.log"; echo "up did not connect"; exit 1; }

fail() { echo "FAIL: $*"; echo "--- up.log"; tail -40 "$WORK/up.log"; exit 1; }

# What the tunnel asked for is on the interface.
ADDRS=$(ip -n "$NS_A" -6 addr show dev "$IFACE")
echo "$ADDRS" | grep -q "inet6 fd60:627a:a42b:.*/128" || fail "no fd60:627a:a42b::/128 address: $ADDRS"
ROUTES=$(ip -n "$NS_A" -6 route show dev "$IFACE")
echo "$ROUTES" | grep -q "^fd60:627a:a42b::/48" || fail "no route to fd60:627a:a42b::/48: $ROUTES"
ip -n "$NS_A" link show "$IFACE" | grep -q "mtu 1280" || fail "MTU is not 1280"
echo "interface ok: $(echo "$ADDRS" | grep -o 'fd60[^ ]*') + fd60:627a:a42b::/48"

# `up` says it is connected once the first workspace list is in, and says how much of it.
REACH=$(grep -o "[0-9]* agents\? in [0-9]* workspaces\? reachable by name.*" "$WORK/up.log" | head -1)
[ -n "$REACH" ] || fail "up did not say which agents are reachable"
echo "up: $REACH"

# DNS through the tunnel, answered by the engine — at once: the zone is filled before the
# workspace list reaches `up`, and `up` waited for that list before saying "connected".
D="ip netns exec $NS_A dig @fd60:627a:a42b::53 +time=2 +tries=3"
ANSWER=$($D +short AAAA "$AGENT_FQDN")
[ "$ANSWER" = "$AGENT_IP" ] || fail "dig AAAA $AGENT_FQDN gave '$ANSWER', want $AGENT_IP"
[ "$($D +short AAAA "$WS_FQDN")" = "$AGENT_IP" ] || fail "single-agent name $WS_FQDN"
[ "$($D +short AAAA "$OWNER_FQDN")" = "$AGENT_IP" ] || fail "owner name $OWNER_FQDN"
[ "$($D +short AAAA "${AGENT_FQDN%coder.}coderlan.")" = "$AGENT_IP" ] || fail "coderlan alias"
MIXED=$(echo "$AGENT_FQDN" | sed 's/m/M/; s/d/D/; s/c/C/')
$D AAAA "$MIXED" | grep -q "^$MIXED.*AAAA.*$AGENT_IP" || fail "mixed-case $MIXED not echoed"
$D A "$AGENT_FQDN" | grep -q "status: NOERROR" || fail "A for a known name is not NOERROR"
[ -z "$($D +short A "$AGENT_FQDN")" ] || fail "A for a known name has answers"
$D AAAA "nosuch.dev1.me.coder." | grep -q "status: NXDOMAIN" || fail "unknown name is not NXDOMAIN"
$D AAAA "example.com." | grep -q "status: REFUSED" || fail "outside name is not REFUSED"
echo "dig ok: AAAA (me, owner, workspace, coderlan, mixed case), A NODATA, NXDOMAIN, REFUSED"
if [ "${DNS_TCP:-1}" = 1 ]; then
  K=$(ip netns exec "$NS_A" kdig @fd60:627a:a42b::53 +tcp +short AAAA "$AGENT_FQDN")
  [ "$K" = "$AGENT_IP" ] || fail "kdig +tcp gave '$K'"
  echo "kdig +tcp ok"
fi

# The agent over the TUN: its page, and 10 MB through its echo service.
PAGE=$(ip netns exec "$NS_A" curl -s --max-time 10 --resolve "${AGENT_FQDN%.}:80:[$AGENT_IP]" "http://${AGENT_FQDN%.}/")
echo "$PAGE" | grep -q "Hello from agent main of workspace dev1" || fail "page: $PAGE"
echo "curl ok"
tun_packets() { link_packets "$NS_A" "$IFACE" "$1"; }
TX0=$(tun_packets tx); RX0=$(tun_packets rx)
ip netns exec "$NS_A" python3 "$(dirname "$0")/echo_stream.py" "$AGENT_IP" $((10 * 1024 * 1024)) \
  || fail "echo"
# Offload on a live TUN: 10 MB each way is ~8600 segments at this MTU. In embedded mode the
# kernel hands our engine TCP super packets (TSO), and it writes the agent's segments back
# joined (GSO frames); a compat tunnel gets bare packets (`up` opens its TUN without offloads).
TX=$(( $(tun_packets tx) - TX0 )); RX=$(( $(tun_packets rx) - RX0 ))
echo "offload: 10 MB each way took $TX reads and $RX writes on the TUN"
if [ "$MODE" = embedded ]; then
  [ "$TX" -lt 4300 ] || fail "the kernel handed over $TX packets for 10 MB: no TCP segmentation offload"
  [ "$RX" -lt 4300 ] || fail "$RX TUN writes for 10 MB: segments were not joined"
else
  [ "$TX" -gt 8000 ] || fail "only $TX packets for 10 MB: the compat tunnel's TUN has offloads on"
fi

# Status for apps.
ip netns exec "$NS_A" "$CODERVPN" status --socket "$WORK/status.sock" > "$WORK/status.txt" || fail "status"
grep -q "dev1" "$WORK/status.txt" || fail "status table: $(cat "$WORK/status.txt")"
echo "status ok"

# Ctrl-C: everything goes away.
kill -INT "$UP_PID"
for _ in $(seq 100); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$UP_PID" 2>/dev/null && fail "up did not exit on SIGINT"
wait "$UP_PID" || fail "up exited with an error"
ip -n "$NS_A" link show "$IFACE" >/dev/null 2>&1 && fail "interface $IFACE left behind"
ip -n "$NS_A" -6 route | grep -q fd60:627a:a42b && fail "route left behind"
[ -e "$WORK/status.sock" ] && fail "status socket left behind"
echo "teardown ok"
echo "up ok ($MODE)"
