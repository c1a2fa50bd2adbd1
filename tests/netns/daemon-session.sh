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

start_testbed --workspaces 2
ip netns exec "$NS_A" python3 "$(dirname "$0")/../python/manager.py" session "$CODERVPN" \
  "$(json 'd["url"]')" "$(json 'd["token"]')" "$(json 'd["agents"][1]["name"]')" \
  "$(json 'd["agents"][1]["ip"]')" "$MODE"
