#!/usr/bin/env bash
# Coder's Linux daemon behaviour (issue #14): a manager that sends no TUN
# (`tunnel_file_descriptor` 0, as Coder's Linux desktop app does) gets an interface `coder0`
# the daemon makes and configures itself — addresses, MTU, routes, DNS (resolv.conf here:
# no systemd-resolved) — and everything is gone after the manager stops it. The same Go
# manager (coderpeer, Coder's vpn package) drives Coder's real `coder vpn-daemon run`
# (v2.36.1) and ours in turn against one testbed; the interface, address prefix, MTU,
# routes and resolver state they leave must match.
#
# Needs root, iproute2, wireguard-tools, curl, python3, tests/coder-go/build.sh's binaries.

source "$(dirname "$0")/lib.sh"
CODER_GO=$(cd "$(dirname "$0")/../.." && pwd)/target/coder-go
trap cleanup EXIT
setup_hosts
[ -x "$CODER_GO/coder" ] && [ -x "$CODER_GO/coderpeer" ] || { echo "run tests/coder-go/build.sh"; exit 1; }

RESOLV=/etc/netns/$NS_A/resolv.conf
cp "$RESOLV" "$WORK/resolv.before"
start_testbed --workspaces 1 --server-version v2.36.1
URL=$(json 'd["url"]'); TOKEN=$(json 'd["token"]')
FQDN=$(json 'd["agents"][0]["fqdn"][1]'); FQDN=${FQDN%.}

# state NAME: what the namespace looks like, with the session's random address masked.
state() {
  {
    echo "link: $(ip -n "$NS_A" -o link show coder0 2>/dev/null | grep -o 'mtu [0-9]*\|state [A-Z]*\|<[^>]*>' | tr '\n' ' ')"
    ip -n "$NS_A" -6 -o addr show dev coder0 scope global 2>/dev/null \
      | awk '{print "addr:", $4}' | sed -E 's/^addr: fd60:627a:a42b:[0-9a-f:]*\//addr: fd60:627a:a42b:<random>\//'
    ip -n "$NS_A" -6 route show table all dev coder0 2>/dev/null | grep -v '^fe80\|^local\|^multicast\|^anycast' \
      | sed -E 's/fd60:627a:a42b:[0-9a-f:]+ proto kernel/<own address> proto kernel/' | sed 's/^/route: /' | sort
    ip -n "$NS_A" -6 rule show | { grep -v '^0:\|^32766:' || true; } | sed 's/^/rule: /'
    grep -v '^#' "$RESOLV" | sed 's/^/resolv.conf: /'
  } > "$WORK/$1.state"
}

run_daemon() { # NAME DAEMON-CMD...
  local name=$1; shift
  ip netns exec "$NS_A" "$CODER_GO/coderpeer" manager --url "$URL" --token "$TOKEN" \
    --tun-fd 0 --agents 1 --hold --timeout 120s -- "$@" \
    > "$WORK/$name.out" 2> "$WORK/$name.log" &
  local mgr=$!
  PIDS+=("$mgr")
  for _ in $(seq 300); do grep -q holding "$WORK/$name.out" && break; kill -0 $mgr 2>/dev/null || break; sleep 0.1; done
  grep -q holding "$WORK/$name.out" || { tail -30 "$WORK/$name.log"; fail "$name: the manager never held a session"; }
  # The resolver configuration lands once the names are known.
  for _ in $(seq 100); do cmp -s "$RESOLV" "$WORK/resolv.before" || break; sleep 0.1; done
  for _ in $(seq 50); do
    PAGE=$(ip netns exec "$NS_A" curl -s --max-time 3 "http://$FQDN/") && echo "$PAGE" | grep -q "Hello from agent" && break
    sleep 0.2
  done
  echo "$PAGE" | grep -q "Hello from agent" || fail "$name: curl http://$FQDN/ by name: $PAGE"
  state "$name"
  echo "--- $name while up (curl by name ok):"; sed 's/^/  /' "$WORK/$name.state"
  SENT=$(grep -c '^network settings:' "$WORK/$name.out" || true)
  echo "  network settings sent to the manager: $SENT"
  [ "$SENT" = 0 ] || fail "$name sent the manager network settings"
  # Routed into coder0 (whichever table), named through the tunnel's resolver first.
  grep -q "^route: fd60:627a:a42b::/48 " "$WORK/$name.state" || fail "$name: no route for fd60:627a:a42b::/48 on coder0"
  [ "$(grep -m1 '^resolv.conf: nameserver' "$WORK/$name.state")" = "resolv.conf: nameserver fd60:627a:a42b::53" ] \
    || fail "$name: the tunnel's resolver is not first"
  grep -q "^link: .*UP.* mtu 1280 " "$WORK/$name.state" || fail "$name: coder0 not up with MTU 1280"
  grep -q "^addr: fd60:627a:a42b:<random>/128$" "$WORK/$name.state" || fail "$name: no /128 Coder address" 
  kill -INT "$mgr"
  for _ in $(seq 150); do kill -0 "$mgr" 2>/dev/null || break; sleep 0.1; done
  wait "$mgr" || true
  for _ in $(seq 100); do ip -n "$NS_A" link show coder0 >/dev/null 2>&1 || break; sleep 0.1; done
  ip -n "$NS_A" link show coder0 >/dev/null 2>&1 && fail "$name: coder0 left behind"
  cmp "$RESOLV" "$WORK/resolv.before" || fail "$name: resolv.conf not restored: $(cat "$RESOLV")"
  echo "  after stop: coder0 gone, resolv.conf restored"
}

run_daemon coder "$CODER_GO/coder" vpn-daemon run --rpc-read-handle 3 --rpc-write-handle 4
run_daemon ours "$CODERVPN" vpn-daemon run --rpc-read-handle 3 --rpc-write-handle 4
# Two differences are deliberate (docs/coder-go-peers.md): Coder's router puts the route in
# table 52 behind tailscale's policy rules, ours in the main table; Coder's resolv.conf
# names only the tunnel's resolver (its resolver forwards the rest), ours lists the
# original servers after it. Everything else must match.
comparable() {
  grep -v '^rule: \|^resolv.conf: *$' "$WORK/$1.state" \
    | sed -E 's/ table 52//; s/ proto static//' \
    | awk '/^resolv.conf: nameserver/ { if (seen++) next } /^resolv.conf: options/ { next } { print }'
}
diff -u <(comparable coder) <(comparable ours) > "$WORK/state.diff" || { cat "$WORK/state.diff"; fail "coder0 state differs"; }
echo "same interface, address, MTU, routes and first resolver as Coder's daemon:"
comparable ours | sed 's/^/  /'
# Our daemon killed (SIGKILL) while up: coder0 goes with the process; the resolv.conf it
# left is put back by the next start, which then runs as usual.
ip netns exec "$NS_A" "$CODER_GO/coderpeer" manager --url "$URL" --token "$TOKEN" \
  --tun-fd 0 --agents 1 --hold --timeout 120s -- "$CODERVPN" vpn-daemon run --rpc-read-handle 3 --rpc-write-handle 4 \
  > "$WORK/killed.out" 2> "$WORK/killed.log" &
MGR=$!
PIDS+=("$MGR")
for _ in $(seq 300); do grep -q holding "$WORK/killed.out" && break; sleep 0.1; done
for _ in $(seq 100); do cmp -s "$RESOLV" "$WORK/resolv.before" || break; sleep 0.1; done
DAEMON=$(pgrep -P "$MGR" -f "vpn-daemon run" || true)
[ -n "$DAEMON" ] || fail "no daemon under the manager"
kill -KILL "$DAEMON"
# The manager holds on until told; it finds its daemon gone when it stops.
kill -INT "$MGR" 2>/dev/null || true
for _ in $(seq 100); do kill -0 "$MGR" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$MGR" 2>/dev/null || true
wait "$MGR" 2>/dev/null || true
for _ in $(seq 50); do ip -n "$NS_A" link show coder0 >/dev/null 2>&1 || break; sleep 0.1; done
ip -n "$NS_A" link show coder0 >/dev/null 2>&1 && fail "coder0 outlived the killed daemon"
head -1 "$RESOLV" | grep -q "generated by codervpn (pid $DAEMON)" || fail "after SIGKILL: $(head -1 "$RESOLV")"
run_daemon again "$CODERVPN" vpn-daemon run --rpc-read-handle 3 --rpc-write-handle 4
grep -q "codervpn that is gone (pid $DAEMON) left behind" "$WORK/again.log" || fail "the next start did not say it restored the killed daemon's resolv.conf"
echo "after a SIGKILL: coder0 gone with the process; resolv.conf restored by the next start"
echo "coder0 ok"
