#!/usr/bin/env bash
# Coder's own Go code (github.com/coder/coder/v2, the release pinned in tests/coder-go)
# against ours, in network namespaces. Binaries: tests/coder-go/build.sh puts `coder` and
# `coderpeer` in target/coder-go/ ($CODER_GO overrides); a missing one fails the test.
#
#   usage: coder-go.sh go-server | go-manager | compat-coder
#
# go-server     host b: `coderpeer serve` — coder's tailnet.ClientService, Coordinator, DERP
#               server (with websockets) and Go agents (tailnet.Conn). host a: `codervpn up`
#               with UDP between the hosts blocked: names resolve (dig), ping, the page by
#               name and 10 MB echoed intact, all over coder's DERP; UDP let through: the
#               path goes direct (the agents' real magicsock answers disco), 10 MB again;
#               blocked mid-transfer: DERP; let through: direct again.
# go-manager    host a: `coderpeer manager` (a Go manager on coder's vpn types) drives our
#               `vpn-daemon run` (userspace, SOCKS5) against the Go server in b.
# compat-coder  host b: our testbed publishes the real `coder` CLI, signed with minisign.
#               host a: `codervpn up --mode compat-daemon` downloads, verifies and runs it as
#               `vpn-daemon run` from a sealed memfd (nothing executable in the cache
#               directory); Coder's Linux daemon makes its own TUN coder0 and writes
#               DNS to a's resolv.conf (/etc/netns/<a>/resolv.conf); an agent of our testbed
#               answers ping and HTTP by name through it (so our testbed is good enough
#               for Coder's own tunnel); after Ctrl-C coder0 is gone and resolv.conf is
#               restored byte for byte.
#
# Needs root, iproute2, nftables, iptables (Coder's Linux router), wireguard-tools, dnsutils,
# curl, python3, minisign.

source "$(dirname "$0")/lib.sh"
MODE=${1:?usage: coder-go.sh go-server|go-manager|compat-coder}
CODER_GO=${CODER_GO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/coder-go}
for bin in coder coderpeer; do
  [ -x "$CODER_GO/$bin" ] || { echo "FAIL: $CODER_GO/$bin missing: run tests/coder-go/build.sh"; exit 1; }
done
RESOLV_DIR=/etc/netns/$NS_A
cleanup_all() { cleanup; rm -rf "$RESOLV_DIR"; }
trap cleanup_all EXIT
setup_hosts

# Coder's agents treat the link-local IPv6 address that appears when DAD completes (a second
# or two after the veth comes up) as a major link change: magicsock rebinds and redials
# DERP. A 10 MB stream over DERP crossing that moment was reset once in about 20 runs (see
# docs/coder-go-peers.md); wait for DAD before anything starts, so no link changes mid-test.
settle_ipv6() {
  for _ in $(seq 50); do
    [ -z "$(ip -n "$NS_A" -6 addr show tentative)$(ip -n "$NS_B" -6 addr show tentative)" ] && return 0
    sleep 0.1
  done
  echo "IPv6 DAD did not settle in 5 s"
}
settle_ipv6

# start_go_server ARGS...: `coderpeer serve` in host b on $VETH_B:8080; its JSON line (the
# shape of `codervpn testbed serve`'s) lands in $WORK/testbed.json.
start_go_server() {
  ip netns exec "$NS_B" "$CODER_GO/coderpeer" serve --listen "$VETH_B:8080" "$@" \
    > "$WORK/testbed.json" 2> "$WORK/testbed.log" &
  PIDS+=($!)
  for _ in $(seq 100); do [ -s "$WORK/testbed.json" ] && break; sleep 0.1; done
  [ -s "$WORK/testbed.json" ] || { cat "$WORK/testbed.log"; echo "FAIL: the Go server did not start"; exit 1; }
  echo "Go server (coder $(json 'd["coder_version"]')) at $(json 'd["url"]')"
}

case "$MODE" in
go-server)
  start_go_server --workspaces 2
  AGENT_IP=$(json 'd["agents"][0]["ip"]')
  NAME=$(json 'd["agents"][0]["fqdn"][0]')      # main.dev1.me.coder
  # First over DERP only: host b drops UDP from a, so disco (and STUN) cannot get through.
  block_udp "$NS_B" "$VETH_A"
  start_up
  IFACE="${NS_PREFIX}t"
  ADDRS=$(ip -n "$NS_A" -6 addr show dev "$IFACE")
  grep -q "inet6 fd60:627a:a42b:.*/128" <<< "$ADDRS" || fail "no tunnel address: $ADDRS"
  D="ip netns exec $NS_A dig @fd60:627a:a42b::53 +time=2 +tries=3 +short AAAA"
  for _ in $(seq 50); do [ "$($D "$NAME")" = "$AGENT_IP" ] && break; sleep 0.1; done
  for n in $(json '" ".join(d["agents"][0]["fqdn"])'); do
    [ "$($D "$n")" = "$AGENT_IP" ] || fail "dig AAAA $n gave '$($D "$n")', want $AGENT_IP"
  done
  echo "dig ok: $(json '", ".join(d["agents"][0]["fqdn"])') -> $AGENT_IP"
  ip netns exec "$NS_A" ping -6 -c 3 -W 3 "$AGENT_IP" > "$WORK/ping.txt" || fail "ping over DERP: $(cat "$WORK/ping.txt")"
  echo "ping over DERP ok: $(grep -o '[0-9]* received' "$WORK/ping.txt")"
  PAGE=$(ip netns exec "$NS_A" curl -s --max-time 10 --resolve "$NAME:80:[$AGENT_IP]" "http://$NAME/")
  echo "$PAGE" | grep -q "Hello from agent main of workspace dev1" || fail "page: $PAGE"
  echo "$PAGE" | grep -q "Coder's Go tailnet" || fail "the page is not the Go agent's: $PAGE"
  echo "curl over DERP ok: $(echo "$PAGE" | grep -o '<h1>.*</h1>')"
  ip netns exec "$NS_A" python3 "$(dirname "$0")/echo_stream.py" "$AGENT_IP" $((10 * 1024 * 1024)) || fail "10 MB echo over DERP"
  grep -q "is direct via" "$WORK/up.log" && fail "a path went direct with UDP blocked"
  # The path shows once a disco ping crossed DERP (every 5 s while relayed).
  status_says "dev1 .*DERP"
  echo "status: $(grep -o 'DERP[^|]*' "$WORK/status.txt" | head -1)"
  # Then direct: UDP let through, the Go agent's magicsock answers our disco pings.
  FROM=$(log_lines)
  unblock_udp "$NS_B"
  wait_log "is direct via $VETH_B:" 30 "$FROM" || fail "the path to the Go agent never went direct"
  echo "direct: $(grep -o "is direct via [^ ]*" "$WORK/up.log" | tail -1)"
  status_says "dev1 .*p2p"
  echo "status: p2p"
  ip netns exec "$NS_A" python3 "$(dirname "$0")/echo_stream.py" "$AGENT_IP" $((10 * 1024 * 1024)) || fail "10 MB echo direct"
  # DERP again when UDP is blocked mid-transfer, direct once it is let through.
  derp_fallback_and_back "$AGENT_IP" "$NS_B" "$VETH_A" "$VETH_B"
  stop_up || fail "up exited with an error"
  echo "coder-go ok (go-server)"
  ;;
go-manager)
  start_go_server --workspaces 2
  ip netns exec "$NS_A" env CODERVPN_SOCKS5=127.0.0.1:1080 "$CODER_GO/coderpeer" manager \
    --url "$(json 'd["url"]')" --token "$(json 'd["token"]')" --agents 2 \
    --fetch "http://$(json 'd["agents"][1]["fqdn"][0]')/" --socks5 127.0.0.1:1080 -- \
    "$CODERVPN" vpn-daemon run --rpc-read-handle 3 --rpc-write-handle 4 \
    > "$WORK/manager.out" 2> "$WORK/manager.log" || { cat "$WORK/manager.out"; tail -40 "$WORK/manager.log"; fail "Go manager"; }
  cat "$WORK/manager.out"
  grep -q "fetched .*Hello from agent main of workspace dev2" "$WORK/manager.out" || fail "no page"
  grep -q "tunnel exited on hang-up: status 0" "$WORK/manager.out" || fail "our daemon did not exit on hang-up"
  echo "coder-go ok (go-manager)"
  ;;
compat-coder)
  NAME=coder-linux-amd64
  minisign -G -W -p "$WORK/mini.pub" -s "$WORK/mini.key" >/dev/null
  cp "$CODER_GO/coder" "$WORK/$NAME"
  minisign -S -s "$WORK/mini.key" -m "$WORK/$NAME" -x "$WORK/$NAME.minisig" \
    -t "codervpn-artifact file=$NAME version=2.36.1 platform=linux-x86_64" >/dev/null
  # The server runs the release the CLI is (compat mode requires the two to match).
  start_testbed --workspaces 2 --server-version v2.36.1 --publish "$NAME=$WORK/$NAME" --publish "$NAME.minisig=$WORK/$NAME.minisig"
  AGENT_IP=$(json 'd["agents"][0]["ip"]')
  FQDN=$(json 'd["agents"][0]["fqdn"][1]'); FQDN=${FQDN%.}   # main.dev1.me.coder
  # a's own resolv.conf (ip netns exec bind-mounts it over /etc/resolv.conf): Coder's
  # daemon manages it directly here (no systemd-resolved), and must put it back.
  mkdir -p "$RESOLV_DIR"
  printf '# host a resolver\nnameserver 192.0.2.53\noptions timeout:1\n' > "$RESOLV_DIR/resolv.conf"
  cp "$RESOLV_DIR/resolv.conf" "$WORK/resolv.before"
  COMPAT=(--mode compat-daemon --compat-key "$WORK/mini.pub" --cache-dir "$WORK/cache" --compat-max-mib 1024)
  # A start that fails (a wrong token): up exits with the server's answer and leaves no
  # process behind — Coder's daemon would otherwise run on after the hang-up.
  if ip netns exec "$NS_A" timeout 60 "$CODERVPN" up --url "$(json 'd["url"]')" --token wrong \
      --allow-http --interface "${NS_PREFIX}t" --status-socket none "${COMPAT[@]}" > "$WORK/bad.log" 2>&1; then
    fail "up with a wrong token succeeded"
  fi
  grep -q "401" "$WORK/bad.log" || { cat "$WORK/bad.log"; fail "up with a wrong token did not say 401"; }
  [ -z "$(ip netns pids "$NS_A")" ] || fail "processes left in host a after a failed start: $(ip netns pids "$NS_A" | xargs -r ps -o pid=,args= -p)"
  cmp -s "$RESOLV_DIR/resolv.conf" "$WORK/resolv.before" || fail "a failed start left resolv.conf changed"
  echo "failed start: 401 reported, Coder's daemon stopped, nothing left"
  start_up "${COMPAT[@]}"
  grep -q "verified $NAME" "$WORK/up.log" || fail "no verified download"
  # Issue #17: Coder's daemon runs from a sealed memfd as `coder`, nothing in the cache is
  # executable, and the CLI is cached as data (0600).
  DAEMON_EXE=
  for p in $(pgrep -P "$UP_PID"); do
    DAEMON_EXE=$(readlink "/proc/$p/exe" || true)
    DAEMON_ARGV0=$(tr '\0' '\n' < "/proc/$p/cmdline" | head -1)
  done
  [[ $DAEMON_EXE == "/memfd:codervpn-compat-"*"-$NAME (deleted)" ]] || fail "Coder's daemon does not run from a memfd: exe $DAEMON_EXE"
  [ "$DAEMON_ARGV0" = coder ] || fail "Coder's daemon has argv[0] $DAEMON_ARGV0"
  [ -z "$(find "$WORK/cache" -type f -perm /111)" ] || fail "executable files in the cache: $(ls -la "$WORK/cache")"
  [ "$(stat -c %a "$WORK/cache/$NAME")" = 600 ] || fail "cached CLI: $(ls -la "$WORK/cache")"
  echo "Coder's daemon runs from $DAEMON_EXE as $DAEMON_ARGV0; cache: $(cd "$WORK/cache" && stat -c '%n %a' -- * .[!.]* 2>/dev/null | tr '\n' ' ')"
  # Coder's router sets the address once the tailnet is up, a moment after `start` (and
  # may take it off and put it back as it reconfigures): seen once is enough.
  ADDR=
  for _ in $(seq 150); do
    ADDR=$(ip -n "$NS_A" -6 addr show dev coder0 2>/dev/null | grep -o 'fd60:627a:a42b:[^ ]*' | head -1 || true)
    [ -n "$ADDR" ] && break
    sleep 0.1
  done
  [ -n "$ADDR" ] || fail "Coder's daemon made no coder0 with a Coder address: $(ip -n "$NS_A" addr)"
  echo "coder0: $ADDR"
  # Its DNS configurator writes resolv.conf once the workspace names are known.
  for _ in $(seq 100); do
    cmp -s "$RESOLV_DIR/resolv.conf" "$WORK/resolv.before" || break
    sleep 0.1
  done
  cmp -s "$RESOLV_DIR/resolv.conf" "$WORK/resolv.before" && fail "Coder's daemon left resolv.conf alone"
  echo "resolv.conf while up: $(grep -v '^#' "$RESOLV_DIR/resolv.conf" | tr '\n' ' ')"
  OK=
  for _ in $(seq 50); do
    PAGE=$(ip netns exec "$NS_A" curl -s --max-time 5 "http://$FQDN/") && echo "$PAGE" | grep -q "Hello from agent main of workspace dev1" && { OK=1; break; }
    sleep 0.2
  done
  [ -n "$OK" ] || fail "curl http://$FQDN/ through Coder's daemon: $PAGE"
  echo "curl by name ok (the system resolver, Coder's DNS, Coder's WireGuard, our testbed's agent)"
  ip netns exec "$NS_A" ping -6 -c 3 -W 3 "$FQDN" > "$WORK/ping.txt" || fail "ping by name: $(cat "$WORK/ping.txt")"
  echo "ping by name ok: $(grep -o '[0-9]* received' "$WORK/ping.txt")"
  ip netns exec "$NS_A" python3 "$(dirname "$0")/echo_stream.py" "$AGENT_IP" $((10 * 1024 * 1024)) || fail "10 MB echo"
  # A wake (1.3) to Coder's daemon: its WakeResponse is empty, and that is a success.
  FROM=$(log_lines)
  kill -USR1 "$UP_PID"
  wait_log "tunnel woke" 10 "$FROM" || fail "Coder's daemon did not answer the wake as a success"
  echo "wake answered by Coder's daemon"
  stop_up || fail "up exited with an error"
  ip -n "$NS_A" link show coder0 >/dev/null 2>&1 && fail "coder0 left behind"
  cmp "$RESOLV_DIR/resolv.conf" "$WORK/resolv.before" || fail "resolv.conf not restored: $(cat "$RESOLV_DIR/resolv.conf")"
  echo "teardown ok: coder0 gone, resolv.conf restored byte for byte"
  echo "coder-go ok (compat-coder)"
  ;;
*) echo "unknown mode $MODE"; exit 2 ;;
esac
