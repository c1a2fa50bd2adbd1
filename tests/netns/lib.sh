# Shared pieces for the network-namespace tests and benches. Two topologies:
#
# setup_hosts — two hosts, "a" and "b", joined by a veth pair (10.201.0.1 <-> 10.201.0.2),
# each running one WireGuard implementation with tunnel addresses 10.202.0.1 and
# 10.202.0.2, or the client (a) and the testbed (b).
#
# setup_routed — four hosts: client a behind a NAT router r; the testbed's server s and
# the agents' host b on the "internet" segment, a bridge inside r:
#
#   a 10.203.0.2/24 --veth-- 10.203.0.1 r  (LAN; a's default route is r)
#                                        r  bridge 10.204.0.1/24 = r's public address,
#                                           masquerading what leaves the LAN
#   s 10.204.0.2/24 --veth-- bridge port    (codervpn testbed serve --agent-netns b)
#   b 10.204.0.3/24 --veth-- bridge port    (the simulated agents)
#
# s and b reach each other over the bridge and a only through r's NAT; neither has a
# route to the LAN, so a's own addresses are unreachable from them.
#
# setup_routed agent-nat — b sits behind its own NAT router r2 as well:
#
#   b 10.205.0.2/24 --veth-- 10.205.0.1 r2 10.204.0.4/24 --veth-- bridge port
#
# so neither side's own address is reachable from the other: a direct path needs both
# public mappings (STUN) and packets from both sides (hole punching). AGENT_PUBLIC is the
# address b's traffic appears from on the public segment (PUB_B, or PUB_R2 behind r2). start_testbed then
# runs in s. The server's link (s side) is the only one s's traffic crosses, so a delay
# there (netem) slows DERP but not the direct client <-> agent path.
#
# Everything lives in namespaces this script creates (prefixed with $NS_PREFIX) and is
# torn down by `cleanup`. Needs root, iproute2, wireguard-tools; wireguard-go and
# boringtun-cli for those implementations.

set -euo pipefail

NS_PREFIX=${NS_PREFIX:-cvpn$$}
NS_A=${NS_PREFIX}a
NS_B=${NS_PREFIX}b
NS_R=${NS_PREFIX}r
NS_S=${NS_PREFIX}s
NS_R2=${NS_PREFIX}q
VETH_A=10.201.0.1
VETH_B=10.201.0.2
# setup_routed: a's LAN address and r's; the public segment's addresses of r, s and b.
LAN_A=10.203.0.2
LAN_R=10.203.0.1
PUB_R=10.204.0.1
PUB_S=10.204.0.2
PUB_B=10.204.0.3
PUB_R2=10.204.0.4
LAN_B=10.205.0.2
LAN_R2=10.205.0.1
AGENT_PUBLIC=$PUB_B
# ... and the interfaces: a's LAN veth, s's and b's public veths (their peers are in r).
IF_LAN_A=${NS_PREFIX}la
IF_PUB_S=${NS_PREFIX}ps
IF_PUB_B=${NS_PREFIX}pb
# Where start_testbed runs and listens (setup_routed moves it to s).
TESTBED_NS=$NS_B
TESTBED_ADDR=$VETH_B
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
  for ns in "$NS_A" "$NS_B" "$NS_R" "$NS_S" "$NS_R2"; do
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  rm -rf "$WORK"
}

# own_resolv_conf NS: NS gets a resolv.conf of its own (`ip netns exec` bind-mounts
# /etc/netns/NS/resolv.conf over /etc/resolv.conf), so that `codervpn up`, which manages
# /etc/resolv.conf when systemd-resolved is absent, never touches the host's.
own_resolv_conf() {
  mkdir -p "/etc/netns/$1"
  printf '# resolver of test host %s\nnameserver 192.0.2.53\noptions timeout:1\n' "$1" > "/etc/netns/$1/resolv.conf"
}

# private_mounts [PKG_DIR]: host a gets a private mount namespace, held by a process: /etc
# and /usr are overlays (writes kept in $WORK; PKG_DIR's etc/ added to /etc, its sbin/ and
# lib/ to /usr's, as on Debian's merged /usr), /run is a tmpfs. Sets HOLDER, UP_WRAP (so
# start_up runs `up` inside) and defines in_a CMD... (runs CMD inside, in host a's netns).
private_mounts() {
  local pkg=${1:-}
  mkdir -p "$WORK/etc-up" "$WORK/etc-wk" "$WORK/usr-up/sbin" "$WORK/usr-up/lib" "$WORK/usr-wk"
  if [ -n "$pkg" ]; then
    [ -d "$pkg/etc" ] && cp -a "$pkg/etc/." "$WORK/etc-up/"
    [ -d "$pkg/sbin" ] && cp -a "$pkg/sbin/." "$WORK/usr-up/sbin/"
    [ -d "$pkg/lib" ] && cp -a "$pkg/lib/." "$WORK/usr-up/lib/"
  fi
  ip netns exec "$NS_A" unshare -m --propagation private bash -c '
    set -e
    W=$1
    mount -t overlay overlay -o lowerdir=/etc,upperdir=$W/etc-up,workdir=$W/etc-wk /etc
    mount -t overlay overlay -o lowerdir=/usr,upperdir=$W/usr-up,workdir=$W/usr-wk /usr
    mount -t tmpfs tmpfs /run
    touch "$W/holder.ready"
    exec sleep infinity' holder "$WORK" &
  HOLDER=$!
  PIDS+=("$HOLDER")
  for _ in $(seq 100); do [ -e "$WORK/holder.ready" ] && break; sleep 0.05; done
  [ -e "$WORK/holder.ready" ] || { echo "FAIL: the mount namespace holder did not start"; exit 1; }
  UP_WRAP=(nsenter -t "$HOLDER" -m)
}
in_a() { nsenter -t "$HOLDER" -m -n "$@"; }

setup_hosts() {
  ip netns add "$NS_A"
  ip netns add "$NS_B"
  own_resolv_conf "$NS_A"
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

# router_firewall NS WAN_IF: what a home router does — nothing new from the WAN side is
# let in to the router itself. Besides realism this matters for hole punching: a packet
# the router accepts (and answers with ICMP port unreachable) leaves a conntrack entry,
# and the masquerade of the inside host's later packet to the same peer then clashes
# with it and takes another port; a dropped packet leaves no entry.
router_firewall() {
  ip netns exec "$1" nft -f - <<NFT
table inet cvpnfw {
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "$2" ct state new drop
  }
}
NFT
}

# nat_router NS LAN_CIDR WAN_IF: NS forwards, masquerades what leaves LAN_CIDR by WAN_IF,
# and lets nothing new in from WAN_IF (router_firewall).
nat_router() {
  ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$1" nft -f - <<NFT
table ip cvpnnat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $2 oifname "$3" masquerade
  }
}
NFT
  router_firewall "$1" "$3"
}

# lan_link HOST_NS HOST_IF HOST_ADDR ROUTER_NS ROUTER_IF ROUTER_ADDR: a veth between a host
# and its router on a /24, the host's default route through the router.
lan_link() {
  ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
  ip -n "$1" addr add "$3/24" dev "$2"
  ip -n "$4" addr add "$6/24" dev "$5"
  ip -n "$1" link set "$2" up
  ip -n "$4" link set "$5" up
  ip -n "$1" route add default via "$6"
}

setup_routed() {
  local agent_nat=${1:-}
  for ns in "$NS_A" "$NS_R" "$NS_S" "$NS_B"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  [ "$agent_nat" = agent-nat ] && { ip netns add "$NS_R2"; ip -n "$NS_R2" link set lo up; }
  own_resolv_conf "$NS_A"
  # a's LAN.
  lan_link "$NS_A" "$IF_LAN_A" "$LAN_A" "$NS_R" "${NS_PREFIX}lr" "$LAN_R"
  # The public segment: a bridge in r carrying r's public address, s and b on its ports.
  ip -n "$NS_R" link add "${NS_PREFIX}br" type bridge
  ip -n "$NS_R" addr add "$PUB_R/24" dev "${NS_PREFIX}br"
  ip -n "$NS_R" link set "${NS_PREFIX}br" up
  local ns ifc peer addr
  local public_hosts="s b"
  [ "$agent_nat" = agent-nat ] && public_hosts="s q"
  for host in $public_hosts; do
    case $host in
      s) ns=$NS_S; ifc=$IF_PUB_S; addr=$PUB_S ;;
      b) ns=$NS_B; ifc=$IF_PUB_B; addr=$PUB_B ;;
      q) ns=$NS_R2; ifc=${NS_PREFIX}pq; addr=$PUB_R2 ;;
    esac
    peer="${NS_PREFIX}r$host"
    ip link add "$ifc" netns "$ns" type veth peer name "$peer" netns "$NS_R"
    ip -n "$ns" addr add "$addr/24" dev "$ifc"
    ip -n "$ns" link set "$ifc" up
    ip -n "$NS_R" link set "$peer" master "${NS_PREFIX}br" up
  done
  # r routes the LAN out and masquerades it behind its public address.
  nat_router "$NS_R" "$LAN_A/24" "${NS_PREFIX}br"
  if [ "$agent_nat" = agent-nat ]; then
    lan_link "$NS_B" "${NS_PREFIX}lb" "$LAN_B" "$NS_R2" "${NS_PREFIX}lq" "$LAN_R2"
    nat_router "$NS_R2" "$LAN_B/24" "${NS_PREFIX}pq"
    AGENT_PUBLIC=$PUB_R2
  fi
  TESTBED_NS=$NS_S
  TESTBED_ADDR=$PUB_S
}

# delay_server_link MS: after setup_routed, what s sends out is delayed by MS: `tc netem`
# on s's link where the kernel has netem; otherwise (VM kernels without sch_netem) a
# userspace proxy (delay_proxy.py) that s's nftables puts in front of the testbed's TCP
# port 8080, delaying everything the testbed sends by MS — DERP and the API, not ICMP or
# the STUN server's UDP. Prints which one it used.
delay_server_link() {
  local ms=$1
  if ip netns exec "$NS_S" tc qdisc add dev "$IF_PUB_S" root netem delay "${ms}ms" 2>/dev/null; then
    echo "server link delay: netem ${ms} ms on $IF_PUB_S"
    return 0
  fi
  ip netns exec "$NS_S" python3 "$(dirname "${BASH_SOURCE[0]}")/delay_proxy.py" \
    9080 "$PUB_S" 8080 "$ms" > "$WORK/delay.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 50); do grep -qs "ready" "$WORK/delay.log" && break; sleep 0.1; done
  grep -qs "ready" "$WORK/delay.log" || { cat "$WORK/delay.log"; echo "delay proxy did not start"; return 1; }
  ip netns exec "$NS_S" nft -f - <<NFT
table ip cvpndelay {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr $PUB_S tcp dport 8080 redirect to :9080
  }
}
NFT
  echo "server link delay: no netem in this kernel; ${ms} ms on what the testbed sends over TCP (delay_proxy.py)"
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

# start_wggo SIDE [BINARY]: wireguard-go (Debian's, or BINARY) configured with wg(8) on
# host SIDE.
start_wggo() {
  local side=$1 bin=${2:-wireguard-go} ns; ns=$(ns_of "$side")
  WG_PROCESS_FOREGROUND=1 ip netns exec "$ns" "$bin" "$(if_of "$side")" > "$WORK/$side-wggo.log" 2>&1 &
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

# start_testbed ARGS...: `codervpn testbed serve --listen <host>:8080 ARGS...` in host b
# (setup_hosts) or s (setup_routed); its JSON line lands in $WORK/testbed.json, which
# `json EXPR` reads (a Python expression over the parsed line `d`, e.g. `json 'd["token"]'`).
start_testbed() {
  ip netns exec "$TESTBED_NS" "$CODERVPN" testbed serve --listen "$TESTBED_ADDR:8080" "$@" \
    > "$WORK/testbed.json" 2> "$WORK/testbed.log" &
  TESTBED_PID=$!
  PIDS+=($!)
  for _ in $(seq 100); do [ -s "$WORK/testbed.json" ] && break; sleep 0.1; done
  [ -s "$WORK/testbed.json" ] || { cat "$WORK/testbed.log"; echo "testbed did not start"; return 1; }
}

# stop_testbed: stops the testbed start_testbed started (its files are reused by the next).
stop_testbed() {
  kill "$TESTBED_PID" 2>/dev/null || true
  wait "$TESTBED_PID" 2>/dev/null || true
  rm -f "$WORK/testbed.json"
}

# advertised: the endpoints the client last published (the coordinator logs each node; the
# list runs to the last `]`, IPv6 literals have brackets of their own).
advertised() { testbed_log | grep "client node" | tail -1 | grep -o 'endpoints=\[.*\]' || true; }

# testbed_log: the testbed's log without colour codes.
testbed_log() { sed 's/\x1b\[[0-9;]*m//g' "$WORK/testbed.log"; }

json() { python3 -c "import json; d=json.load(open('$WORK/testbed.json')); print($1)"; }

# start_up ARGS...: `codervpn up` against the testbed in host a (TUN ${NS_PREFIX}t, status
# socket $WORK/status.sock, log $WORK/up.log), behind the command prefix in the array
# UP_WRAP when set; returns once it is connected. Sets UP_PID.
start_up() {
  : > "$WORK/up.log"  # a second `up` must not be taken as connected by the first's log
  ip netns exec "$NS_A" ${UP_WRAP[@]+"${UP_WRAP[@]}"} env CODERVPN_LOG=${CODERVPN_LOG:-info} "$CODERVPN" up --url "$(json 'd["url"]')" \
    --token "$(json 'd["token"]')" --allow-http --interface "${NS_PREFIX}t" \
    --status-socket "$WORK/status.sock" "$@" > "$WORK/up.out" 2> "$WORK/up.log" &
  UP_PID=$!
  PIDS+=("$UP_PID")
  for _ in $(seq 600); do
    grep -qs "connected; Ctrl-C" "$WORK/up.log" && return 0
    kill -0 $UP_PID 2>/dev/null || break
    sleep 0.1
  done
  cat "$WORK/up.log"; echo "up did not connect"; return 1
}

# up_direct_to_one_agent: a testbed with one workspace in host b, `codervpn up` in host a,
# traffic to the agent until the path goes direct over the veth (fails if it does not
# within 20 s). Sets AGENT_IP (and UP_PID).
up_direct_to_one_agent() {
  start_testbed --workspaces 1
  AGENT_IP=$(json 'd["agents"][0]["ip"]')
  start_up
  # Traffic starts the WireGuard session; disco finds the veth path.
  ip netns exec "$NS_A" ping -6 -c 3 -W 2 "$AGENT_IP" > /dev/null || true
  wait_log "is direct via $VETH_B:" 20 || fail "the path never went direct"
  echo "direct: $(grep -o "is direct via [^ ]*" "$WORK/up.log" | tail -1)"
}

# link_packets NS IFACE rx|tx: the packets the kernel counted on an interface (on a TUN,
# rx is what the tunnel wrote, tx what the kernel handed it).
link_packets() {
  ip -n "$1" -s -j link show "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"][sys.argv[1]]["packets"])' "$3"
}

# stop_up: SIGINT to `codervpn up`; fails if it does not exit cleanly.
stop_up() {
  kill -INT "$UP_PID"
  for _ in $(seq 100); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
  wait "$UP_PID"
}

fail() {
  echo "FAIL: $*"
  echo "--- up.log"; tail -60 "$WORK/up.log"
  echo "--- testbed.log"; tail -30 "$WORK/testbed.log"
  exit 1
}

# wait_log PATTERN SECONDS [FROM_LINE]: waits for PATTERN in up.log after line FROM_LINE.
wait_log() {
  local pattern=$1 secs=$2 from=${3:-0}
  for _ in $(seq $((secs * 10))); do
    tail -n +"$((from + 1))" "$WORK/up.log" | grep -q "$pattern" && return 0
    sleep 0.1
  done
  return 1
}
log_lines() { wc -l < "$WORK/up.log"; }

# status_says PATTERN: `codervpn status` (in host a, socket $WORK/status.sock) matches
# PATTERN within 15 s (the 5-second status update carries the path).
status_says() {
  for _ in $(seq 30); do
    ip netns exec "$NS_A" "$CODERVPN" status --socket "$WORK/status.sock" > "$WORK/status.txt" 2>&1 || true
    grep -q "$1" "$WORK/status.txt" && return 0
    sleep 0.5
  done
  fail "status does not say $1: $(cat "$WORK/status.txt")"
}
# block_udp NS SADDR / unblock_udp NS: host NS drops (stops dropping) UDP from SADDR.
block_udp() {
  ip netns exec "$1" nft -f - <<NFT
table inet cvpnblock {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr $2 meta l4proto udp drop
  }
}
NFT
}
unblock_udp() { ip netns exec "$1" nft delete table inet cvpnblock; }

# block_derp NS ADDR: host NS drops its TCP to the testbed at ADDR (port 8080: DERP and the
# coordinator), so whatever still reaches an agent went over a direct UDP path.
block_derp() {
  local fam=ip
  [[ "$2" == *:* ]] && fam=ip6
  ip netns exec "$1" nft -f - <<NFT
table inet cvpnnoderp {
  chain output {
    type filter hook output priority 0; policy accept;
    $fam daddr $2 tcp dport 8080 counter drop
  }
}
NFT
}
unblock_derp() { ip netns exec "$1" nft delete table inet cvpnnoderp; }

# start_echo_stream AGENT_IP: from host a, a slow TCP stream through the agent's echo
# service (64 KiB every 100 ms for ~30 s), checked end to end; prints "stream ok ..." to
# $WORK/stream.out. Sets STREAM_PID.
start_echo_stream() {
  ip netns exec "$NS_A" python3 "$(dirname "${BASH_SOURCE[0]}")/echo_stream.py" "$1" \
    $((64 * 1024 * 300)) $((64 * 1024)) 0.1 > "$WORK/stream.out" 2>&1 &
  STREAM_PID=$!
  PIDS+=("$STREAM_PID")
}

# derp_fallback_and_back AGENT_IP BLOCK_NS SADDR DIRECT_ADDR: with a TCP echo stream to the
# agent running, host BLOCK_NS drops UDP from SADDR until the path is DERP, then lets it
# through until the path is direct via DIRECT_ADDR again; the stream must survive it all.
derp_fallback_and_back() {
  local agent=$1 ns=$2 saddr=$3 direct=$4 from
  start_echo_stream "$agent"
  sleep 2
  # The log position is taken before each change: a path can change within milliseconds
  # of it (a pong already on its way), before the line count would be read after.
  from=$(log_lines)
  block_udp "$ns" "$saddr"
  wait_log "is DERP" 20 "$from" || fail "no fallback to DERP with UDP blocked"
  echo "fallback to DERP with UDP blocked"
  sleep 3
  from=$(log_lines)
  unblock_udp "$ns"
  wait_log "is direct via $direct:" 30 "$from" || fail "the path did not go direct again"
  echo "direct again after unblocking"
  wait "$STREAM_PID" || fail "the stream broke: $(cat "$WORK/stream.out")"
  cat "$WORK/stream.out"
}
