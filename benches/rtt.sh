#!/usr/bin/env bash
# Round-trip time through the tunnel on the direct path vs through DERP vs bare, in
# network namespaces: `codervpn up` (host a) pings a simulated agent of the testbed
# (host b) over the TUN — first once disco has made the path direct (UDP across the
# veth), then with UDP blocked so WireGuard goes through the testbed's DERP relay — and,
# for reference, pings host b's veth address directly. ICMPv6 echo is answered by the
# agent's smoltcp stack, so every tunnel sample crosses WireGuard twice.
#
#   usage: benches/rtt.sh [CODERVPN_BINARY]   (default target/release/codervpn)
# Needs root, iproute2, nftables, wireguard-tools, iputils-ping, python3.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CODERVPN=${1:-$ROOT/target/release/codervpn}
COUNT=${COUNT:-500}
source "$ROOT/tests/netns/lib.sh"
trap cleanup EXIT
setup_hosts

IFACE="${NS_PREFIX}t"
start_testbed --workspaces 1
AGENT_IP=$(json 'd["agents"][0]["ip"]')
ip netns exec "$NS_A" env CODERVPN_LOG=info "$CODERVPN" up --url "$(json 'd["url"]')" \
  --token "$(json 'd["token"]')" --allow-http --interface "$IFACE" --status-socket none \
  > /dev/null 2> "$WORK/up.log" &
PIDS+=($!)
for _ in $(seq 150); do grep -qs "connected; Ctrl-C" "$WORK/up.log" && break; sleep 0.1; done
wait_for() { for _ in $(seq 300); do tail -n +"$2" "$WORK/up.log" | grep -q "$1" && return 0; sleep 0.1; done; return 1; }

rtt() {  # rtt LABEL ARGS...: COUNT pings 5 ms apart, prints loss and min/avg/max/mdev
  local label=$1 out
  shift
  out=$(ip netns exec "$NS_A" ping -q -c "$COUNT" -i 0.005 -W 1 "$@" | tail -2)
  printf '%-28s %s | %s\n' "$label" "$(echo "$out" | head -1 | grep -o '[0-9.]*% packet loss')" \
    "$(echo "$out" | tail -1)"
}

ip netns exec "$NS_A" ping -6 -c 3 -W 2 "$AGENT_IP" > /dev/null || true
wait_for "is direct via" 1 || { tail -30 "$WORK/up.log"; echo "never went direct"; exit 1; }
echo "$(date -u +%FT%TZ) $(nproc) vCPU, load $(cut -d' ' -f1 /proc/loadavg), $COUNT pings each"
rtt "bare veth (no tunnel)" -4 "$VETH_B"
rtt "tunnel, direct UDP path" -6 "$AGENT_IP"

ip netns exec "$NS_B" nft -f - <<NFT
table inet cvpnrtt {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr $VETH_A meta l4proto udp drop
  }
}
NFT
FROM=$(wc -l < "$WORK/up.log")
wait_for "is DERP" "$FROM" || { echo "no fallback to DERP"; exit 1; }
rtt "tunnel, via DERP relay" -6 "$AGENT_IP"
