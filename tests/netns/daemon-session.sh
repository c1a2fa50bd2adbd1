#!/usr/bin/env bash
# `codervpn vpn-daemon run` driven over real pipes by a manager we did not write against
# our code (tests/python/manager.py, Google's protobuf), joining the testbed in another
# namespace: MODE=userspace (tunnel_file_descriptor -1, SOCKS5 by name) or MODE=tun (the
# manager creates the TUN, passes its fd, applies the settings with ip(8)).
#
#   usage: daemon-session.sh userspace|tun
source "$(dirname "$0")/lib.sh"
MODE=${1:?usage: daemon-session.sh userspace|tun}
trap cleanup EXIT
setup_hosts

ip netns exec "$NS_B" "$CODERVPN" testbed serve --listen "$VETH_B:8080" --workspaces 2 \
  > "$WORK/testbed.json" 2> "$WORK/testbed.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/testbed.json" ] && break; sleep 0.1; done
[ -s "$WORK/testbed.json" ] || { cat "$WORK/testbed.log"; echo "testbed did not start"; exit 1; }
json() { python3 -c "import json; d=json.load(open('$WORK/testbed.json')); print($1)"; }
ip netns exec "$NS_A" python3 "$(dirname "$0")/../python/manager.py" session "$CODERVPN" \
  "$(json 'd["url"]')" "$(json 'd["token"]')" "$(json 'd["agents"][1]["name"]')" \
  "$(json 'd["agents"][1]["ip"]')" "$MODE"
