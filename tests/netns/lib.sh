# Shared pieces for the network-namespace tests and benches: two hosts, "a" and "b",
# joined by a veth pair (10.201.0.1 <-> 10.201.0.2), each running one WireGuard
# implementation with tunnel addresses 10.202.0.1 and 10.202.0.2.
#
# Everything lives in namespaces this script creates (prefixed with $NS_PREFIX) and is
# torn down by `cleanup`. Needs root, iproute2, wireguard-tools; wireguard-go and
# boringtun-cli for those implementations.

set -euo pipefail

NS_PREFIX=${NS_PREFIX:-cvpn$$}
NS_A=${NS_PREFIX}a
NS_B=${NS_PREFIX}b
VETH_A=10.201.0.1
VETH_B=10.201.0.2
TUN_A=10.202.0.1
TUN_B=10.202.0.2
PORT_A=51820
PORT_B=51821
WORK=$(mktemp -d /tmp/codervpn-netns.XXXXXX)
PIDS=()
CODERVPN=${CODERVPN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/debug/codervpn}

cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
  rm -rf "$WORK"
}

setup_hosts() {
  ip netns add "$NS_A"
  ip netns add "$NS_B"
  ip link add "${NS_PREFIX}va" netns "$NS_A" type veth peer name "${NS_PREFIX}vb" netns "$NS_B"
  ip -n "$NS_A" addr add "$VETH_A/24" dev "${NS_PREFIX}va"
  ip -n "$NS_B" addr add "$VETH_B/24" dev "${NS_PREFIX}vb"
  for ns in "$NS_A" "$NS_B"; do
    ip -n "$ns" link set lo up
  done
  ip -n "$NS_A" link set "${NS_PREFIX}va" up
  ip -n "$NS_B" link set "${NS_PREFIX}vb" up
  umask 077
  wg genkey > "$WORK/a.key"
  wg genkey > "$WORK/b.key"
  wg pubkey < "$WORK/a.key" > "$WORK/a.pub"
  wg pubkey < "$WORK/b.key" > "$WORK/b.pub"
}

# wg_conf SIDE: the peer-side wg(8) config (no Address/MTU) for host SIDE (a|b).
wg_conf() {
  local me=$1 other port oport oveth otun
  if [ "$me" = a ]; then other=b; port=$PORT_A; oport=$PORT_B; oveth=$VETH_B; otun=$TUN_B
  else other=a; port=$PORT_B; oport=$PORT_A; oveth=$VETH_A; otun=$TUN_A; fi
  cat <<CONF
[Interface]
PrivateKey = $(cat "$WORK/$me.key")
ListenPort = $port

[Peer]
PublicKey = $(cat "$WORK/$other.pub")
AllowedIPs = $otun/32
Endpoint = $oveth:$oport
CONF
}

# The tunnel interface of SIDE. wireguard-go and boringtun keep their control socket at
# /var/run/wireguard/<name>.sock, outside any namespace, so names must be unique.
if_of() { echo "${NS_PREFIX}w$1"; }

ns_of() { if [ "$1" = a ]; then echo "$NS_A"; else echo "$NS_B"; fi; }
tun_of() { if [ "$1" = a ]; then echo "$TUN_A"; else echo "$TUN_B"; fi; }

# start_ours SIDE: codervpn wg up on host SIDE.
start_ours() {
  local side=$1 ns; ns=$(ns_of "$side")
  { wg_conf "$side" | sed "/^ListenPort/a Address = $(tun_of "$side")/24\nMTU = 1420"; } > "$WORK/$side-ours.conf"
  ip netns exec "$ns" "$CODERVPN" wg up "$WORK/$side-ours.conf" --name "$(if_of "$side")" 2> "$WORK/$side-ours.log" &
  PIDS+=($!)
  wait_for_link "$ns" "$(if_of "$side")" "$WORK/$side-ours.log"
}

# start_ours_userspace SIDE ARGS...: `codervpn wg up --userspace ARGS...` on host SIDE — no
# TUN in that namespace, and run as an unprivileged user (nobody) to show it needs no root.
# Returns once the log says the listeners are up.
start_ours_userspace() {
  local side=$1 ns conf; ns=$(ns_of "$side"); shift
  conf="$WORK/$side-us.conf"
  { wg_conf "$side" | sed "/^ListenPort/a Address = $(tun_of "$side")/24\nMTU = 1420"; } > "$conf"
  chmod 711 "$WORK"
  chown "${USERSPACE_UID:-65534}" "$conf"
  ip netns exec "$ns" setpriv --reuid="${USERSPACE_UID:-65534}" --regid="${USERSPACE_GID:-65534}" --clear-groups -- \
    "$CODERVPN" wg up "$conf" --userspace "$@" 2> "$WORK/$side-us.log" &
  PIDS+=($!)
  for _ in $(seq 100); do
    grep -q "Ctrl-C to stop" "$WORK/$side-us.log" 2>/dev/null && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "codervpn --userspace did not start on $side; log:" >&2
  cat "$WORK/$side-us.log" >&2
  return 1
}

# start_wggo SIDE: wireguard-go (Debian) configured with wg(8) on host SIDE.
start_wggo() {
  local side=$1 ns; ns=$(ns_of "$side")
  WG_PROCESS_FOREGROUND=1 ip netns exec "$ns" wireguard-go "$(if_of "$side")" > "$WORK/$side-wggo.log" 2>&1 &
  PIDS+=($!)
  wait_for_link "$ns" "$(if_of "$side")" "$WORK/$side-wggo.log"
  configure_uapi "$side"
}

# start_boringtun SIDE: boringtun-cli configured with wg(8) on host SIDE.
start_boringtun() {
  local side=$1 ns; ns=$(ns_of "$side")
  WG_SUDO=1 ip netns exec "$ns" boringtun-cli "$(if_of "$side")" --foreground --disable-drop-privileges > "$WORK/$side-bt.log" 2>&1 &
  PIDS+=($!)
  wait_for_link "$ns" "$(if_of "$side")" "$WORK/$side-bt.log"
  configure_uapi "$side"
}

configure_uapi() {
  local side=$1 ns; ns=$(ns_of "$side")
  wg_conf "$side" > "$WORK/$side-wg.conf"
  for _ in $(seq 50); do
    ip netns exec "$ns" wg setconf "$(if_of "$side")" "$WORK/$side-wg.conf" 2>/dev/null && break
    sleep 0.1
  done
  ip -n "$ns" addr add "$(tun_of "$side")/24" dev "$(if_of "$side")"
  ip -n "$ns" link set "$(if_of "$side")" mtu 1420 up
}

wait_for_link() {
  local ns=$1 link=$2 log=$3
  for _ in $(seq 100); do
    if ip -n "$ns" link show "$link" >/dev/null 2>&1 && ip -n "$ns" link show "$link" | grep -q UP; then
      return 0
    fi
    if ip -n "$ns" link show "$link" >/dev/null 2>&1 && [ "${4:-}" = any ]; then return 0; fi
    sleep 0.1
  done
  # wireguard-go and boringtun bring the link up only after `configure_uapi`.
  ip -n "$ns" link show "$link" >/dev/null 2>&1 && return 0
  echo "interface $link did not appear in $ns; log:" >&2
  cat "$log" >&2
  return 1
}

# start_testbed ARGS...: `codervpn testbed serve --listen <host b>:8080 ARGS...` in host b;
# its JSON line lands in $WORK/testbed.json, which `json EXPR` reads (a Python expression
# over the parsed line `d`, e.g. `json 'd["token"]'`).
start_testbed() {
  ip netns exec "$NS_B" "$CODERVPN" testbed serve --listen "$VETH_B:8080" "$@" \
    > "$WORK/testbed.json" 2> "$WORK/testbed.log" &
  PIDS+=($!)
  for _ in $(seq 100); do [ -s "$WORK/testbed.json" ] && break; sleep 0.1; done
  [ -s "$WORK/testbed.json" ] || { cat "$WORK/testbed.log"; echo "testbed did not start"; return 1; }
}

json() { python3 -c "import json; d=json.load(open('$WORK/testbed.json')); print($1)"; }
