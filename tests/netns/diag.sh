#!/usr/bin/env bash
# Diagnostics (issue #19) as a user meets them, both ways: `codervpn up` in host a reaches
# an agent of the testbed in host b directly over the veth (mode "direct"), or only
# through DERP because UDP between the hosts is dropped from the start (mode "derp").
# Checks `codervpn ping` (path and latency; --until-direct; --tcp), `status --json`,
# `metrics` (the CLI and --metrics-listen, parsed by prometheus_client), `netcheck` (no
# tunnel needed) and `bugreport` (the archive holds the report and none of the secrets).
#
# usage: diag.sh direct|derp
# Needs root, iproute2, nftables, wireguard-tools, dig, curl, python3 + prometheus_client.

MODE=${1:?usage: diag.sh direct|derp}
source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
setup_hosts

HEADER_SECRET="diag-header-secret-$$"
start_testbed --workspaces 1
AGENT_IP=$(json 'd["agents"][0]["ip"]')
URL=$(json 'd["url"]')
TOKEN=$(json 'd["token"]')
if [ "$MODE" = derp ]; then
  # Neither host takes UDP from the other: no STUN, no direct path; DERP is TCP.
  block_udp "$NS_B" "$VETH_A"
  block_udp "$NS_A" "$VETH_B"
fi
start_up --metrics-listen 127.0.0.1:9464 --header "X-Diag-Secret=$HEADER_SECRET"
C() { ip netns exec "$NS_A" "$CODERVPN" "$@"; }
SOCK=(--socket "$WORK/status.sock")

# ping: the path as it is; with --until-direct in direct mode, it ends on a direct pong.
if [ "$MODE" = direct ]; then
  C ping main.dev1 "${SOCK[@]}" -c 30 --interval 0.5 --until-direct > "$WORK/ping.txt" 2>&1 \
    || fail "ping --until-direct failed: $(cat "$WORK/ping.txt")"
  grep -q "via direct $VETH_B:[0-9]*" "$WORK/ping.txt" || fail "no direct pong: $(cat "$WORK/ping.txt")"
  tail -1 "$WORK/ping.txt" | grep -q "path direct $VETH_B:" || fail "summary: $(cat "$WORK/ping.txt")"
else
  C ping main.dev1 "${SOCK[@]}" -c 3 --interval 0.3 > "$WORK/ping.txt" 2>&1 \
    || fail "ping failed: $(cat "$WORK/ping.txt")"
  grep -q "via DERP(Coder Embedded Relay, 999)" "$WORK/ping.txt" || fail "no pong via DERP: $(cat "$WORK/ping.txt")"
  grep -q "no STUN server answered" "$WORK/ping.txt" || fail "no hint about blocked UDP: $(cat "$WORK/ping.txt")"
  C ping main.dev1 "${SOCK[@]}" -c 2 --interval 0.3 --until-direct > "$WORK/ping2.txt" 2>&1 \
    && fail "--until-direct succeeded without a direct path: $(cat "$WORK/ping2.txt")"
  grep -q "no direct path after 2 pings" "$WORK/ping2.txt" || fail "$(cat "$WORK/ping2.txt")"
fi
sed 's/^/  /' "$WORK/ping.txt"
# By address and over TCP (the agent's web server), through the TUN.
C ping "$AGENT_IP" "${SOCK[@]}" -c 2 --interval 0.2 --tcp 80 > "$WORK/tcp.txt" 2>&1 \
  || fail "ping --tcp failed: $(cat "$WORK/tcp.txt")"
grep -q "via TCP :80, " "$WORK/tcp.txt" || fail "$(cat "$WORK/tcp.txt")"
head -1 "$WORK/tcp.txt" | sed 's/^/  /'
C ping nosuch "${SOCK[@]}" -c 1 > "$WORK/bad.txt" 2>&1 && fail "ping of an unknown name succeeded"
grep -q 'no agent is called "nosuch"' "$WORK/bad.txt" || fail "$(cat "$WORK/bad.txt")"

# A DNS query through the tunnel, for the resolver's counters.
ip netns exec "$NS_A" dig +short +time=2 @fd60:627a:a42b::53 main.dev1.me.coder AAAA > "$WORK/dig.txt" \
  || fail "dig failed"
grep -q "$AGENT_IP" "$WORK/dig.txt" || fail "dig: $(cat "$WORK/dig.txt")"

# status --json: schema 1, the agent's path, bytes both ways, the control plane.
C status --json "${SOCK[@]}" > "$WORK/status.json" || fail "status --json failed"
python3 - "$WORK/status.json" "$MODE" "$VETH_B" <<'PY' || fail "status --json: $(cat "$WORK/status.json")"
import json, sys
d = json.load(open(sys.argv[1])); mode, veth_b = sys.argv[2], sys.argv[3]
assert d["schema_version"] == 1 and d["mode"] == "embedded" and d["state"] == "started", d
assert d["control_plane"]["connected"] is True and d["control_plane"]["since_unix"] > 0
a = d["workspaces"][0]["agents"][0]
assert a["host"] and a["addresses"], a
assert a["rx_bytes"] > 0 and a["tx_bytes"] > 0, a
assert a["last_handshake_unix"] and a["handshake_age_secs"] is not None, a
n = d["network"]
if mode == "direct":
    assert a["path"]["kind"] == "direct" and a["path"]["endpoint"].startswith(veth_b + ":"), a
    assert n["stun_responses"] > 0, n
else:
    assert a["path"] == {"kind": "derp", "region_id": 999, "region": "Coder Embedded Relay"}, a
    assert n["stun_requests"] > 0 and n["stun_responses"] == 0, n
assert n["derp"][0]["connected"] is True, n
print(f"  status --json: path {a['path']}, rx {a['rx_bytes']} B, tx {a['tx_bytes']} B")
PY

# metrics: the CLI over the socket, and HTTP from --metrics-listen, in Prometheus format.
C metrics "${SOCK[@]}" > "$WORK/metrics.txt" || fail "codervpn metrics failed"
ip netns exec "$NS_A" curl -sf http://127.0.0.1:9464/metrics > "$WORK/metrics-http.txt" \
  || fail "GET /metrics failed"
if [ "$MODE" = direct ]; then USED=direct; UNUSED=derp; else USED=derp; UNUSED=direct; fi
for f in metrics.txt metrics-http.txt; do
  python3 "$(dirname "$0")/check_metrics.py" "$WORK/$f" \
    "codervpn_up==1" \
    "codervpn_wireguard_bytes_total{path=\"$USED\",direction=\"rx\"}>0" \
    "codervpn_wireguard_bytes_total{path=\"$USED\",direction=\"tx\"}>0" \
    "codervpn_peer_path{agent=\"main.dev1\",path=\"$USED\"}==1" \
    "codervpn_wireguard_handshake_messages_total{type=\"initiation\"}>0" \
    "codervpn_derp_connected{region_id=\"999\"}==1" \
    "codervpn_control_connected==1" \
    "codervpn_dns_queries_total{transport=\"udp\"}>0" \
    "codervpn_dns_answers_total{rcode=\"noerror\"}>0" > "$WORK/check.txt" \
    || fail "$f: $(cat "$WORK/check.txt") $(cat "$WORK/$f")"
done
if [ "$MODE" = derp ]; then
  python3 "$(dirname "$0")/check_metrics.py" "$WORK/metrics.txt" \
    "codervpn_wireguard_bytes_total{path=\"$UNUSED\",direction=\"rx\"}==0" > /dev/null \
    || fail "direct traffic counted with UDP blocked"
fi
grep "codervpn_wireguard_bytes_total{path=\"$USED\"" "$WORK/metrics-http.txt" | sed 's/^/  /'
ip netns exec "$NS_A" curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9464/nope | grep -q 404 \
  || fail "an unknown metrics path is not 404"

# netcheck: no tunnel needed, from the URL and token.
C netcheck --url "$URL" --token "$TOKEN" > "$WORK/netcheck.txt" 2> /dev/null || fail "netcheck failed"
if [ "$MODE" = direct ]; then
  grep -q "UDP: yes" "$WORK/netcheck.txt" || fail "netcheck: $(cat "$WORK/netcheck.txt")"
  grep -q "IPv4 (UDP): yes, $VETH_A:" "$WORK/netcheck.txt" || fail "netcheck: $(cat "$WORK/netcheck.txt")"
  grep -q "999 Coder Embedded Relay: .* ms (STUN), TCP connect" "$WORK/netcheck.txt" || fail "netcheck: $(cat "$WORK/netcheck.txt")"
else
  grep -q "UDP: no" "$WORK/netcheck.txt" || fail "netcheck: $(cat "$WORK/netcheck.txt")"
  grep -q "no STUN server answered" "$WORK/netcheck.txt" || fail "netcheck: $(cat "$WORK/netcheck.txt")"
  grep -q "999 Coder Embedded Relay: TCP connect" "$WORK/netcheck.txt" || fail "netcheck: $(cat "$WORK/netcheck.txt")"
fi
grep -q "Nearest DERP: Coder Embedded Relay (999)" "$WORK/netcheck.txt" || fail "netcheck: $(cat "$WORK/netcheck.txt")"
sed 's/^/  /' "$WORK/netcheck.txt"
C netcheck --url "$URL" --token "$TOKEN" --json > "$WORK/netcheck.json" 2> /dev/null || fail "netcheck --json"
# Coder's own `coder netcheck` (v2.36.1, tests/coder-go/build.sh) from the same host must
# agree on UDP and the preferred region, and — where UDP works — on IPv4 and IPv6 (its
# IPv4/IPv6 turn true on an HTTPS or ICMP measurement too; ours mean a STUN answer).
CODER_CLI=$(dirname "$0")/../../target/coder-go/coder
[ -x "$CODER_CLI" ] || fail "no $CODER_CLI: run tests/coder-go/build.sh"
# Its report ends as soon as every region has a latency, and an ICMP echo over the veth
# can beat the STUN answer (then it says UDP false though STUN works): b drops ICMP from
# a meanwhile, so the region's latency comes from STUN (or HTTPS when UDP is blocked).
ip netns exec "$NS_B" nft -f - <<NFT
table inet cvpnicmp {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr $VETH_A meta l4proto icmp drop
  }
}
NFT
ip netns exec "$NS_A" env CODER_URL="$URL" CODER_SESSION_TOKEN="$TOKEN" \
  "$CODER_CLI" --global-config "$WORK/coder-config" netcheck > "$WORK/coder-netcheck.json" 2> /dev/null \
  || fail "coder netcheck failed"
ip netns exec "$NS_B" nft delete table inet cvpnicmp
python3 - "$WORK/netcheck.json" "$WORK/coder-netcheck.json" "$MODE" <<'PY' || fail "netcheck disagrees with coder netcheck"
import json, sys
ours = json.load(open(sys.argv[1])); theirs = json.load(open(sys.argv[2]))["derp"]["netcheck"]
assert ours["udp"] == (sys.argv[3] == "direct"), ours
fields = [("udp", "UDP"), ("preferred_derp", "PreferredDERP")]
if theirs["UDP"]:
    fields += [("ipv4", "IPv4"), ("ipv6", "IPv6")]
for mine, go in fields:
    assert ours[mine] == theirs[go], f"{mine}: ours {ours[mine]!r}, coder netcheck {theirs[go]!r}"
print(f"  coder netcheck agrees: UDP {theirs['UDP']}, IPv4 {theirs['IPv4']}, IPv6 {theirs['IPv6']}, preferred DERP {theirs['PreferredDERP']}")
PY

# bugreport: every part there, no secret anywhere (token, the --header value).
C bugreport "${SOCK[@]}" -o "$WORK/report.tar.gz" > /dev/null 2> "$WORK/bug.err" \
  || fail "bugreport failed: $(cat "$WORK/bug.err")"
mkdir "$WORK/report" && tar -xzf "$WORK/report.tar.gz" -C "$WORK/report"
for f in version.txt os.txt status.json metrics.txt network.txt settings.txt up.log netcheck.txt; do
  [ -s "$WORK/report/codervpn-bugreport/$f" ] || fail "bugreport has no $f: $(ls "$WORK/report/codervpn-bugreport")"
done
grep -q "joined the tailnet" "$WORK/report/codervpn-bugreport/up.log" || fail "no log lines in the report"
grep -q "fd60:627a:a42b::53" "$WORK/report/codervpn-bugreport/settings.txt" || fail "no DNS settings in the report"
if [ "$MODE" = direct ]; then WANT_UDP="UDP: yes"; else WANT_UDP="UDP: no"; fi
grep -q "$WANT_UDP" "$WORK/report/codervpn-bugreport/netcheck.txt" \
  || fail "the report's netcheck: $(cat "$WORK/report/codervpn-bugreport/netcheck.txt")"
grep -rqF "$TOKEN" "$WORK/report" && fail "the token is in the bug report"
grep -rqF "$HEADER_SECRET" "$WORK/report" && fail "the header value is in the bug report"
zcat "$WORK/report.tar.gz" | grep -aqF "$TOKEN" && fail "the token is in the archive"
echo "  bugreport: $(ls "$WORK/report/codervpn-bugreport" | tr '\n' ' ')"

stop_up || fail "up exited with an error"
# Without a tunnel: the archive says so, and runs its own netcheck from --url/--token.
C bugreport "${SOCK[@]}" -o "$WORK/alone.tar.gz" --url "$URL" --token "$TOKEN" > /dev/null 2> "$WORK/bug.err" \
  || fail "bugreport without a tunnel failed: $(cat "$WORK/bug.err")"
mkdir "$WORK/alone" && tar -xzf "$WORK/alone.tar.gz" -C "$WORK/alone"
grep -q "no tunnel report" "$WORK/alone/codervpn-bugreport/tunnel.txt" || fail "no tunnel.txt"
grep -q "$WANT_UDP" "$WORK/alone/codervpn-bugreport/netcheck.txt" || fail "no netcheck without a tunnel"
grep -rqF "$TOKEN" "$WORK/alone" && fail "the token is in the tunnel-less bug report"
echo "diag ok ($MODE)"
