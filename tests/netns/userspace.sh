#!/usr/bin/env bash
# userspace.sh IMPL_B: host a runs `codervpn wg up --userspace` (no TUN in its namespace,
# run as nobody) with a SOCKS5 server and a port forward; host b runs IMPL_B (ours |
# wggo | boringtun) on a TUN and an HTTP server on its tunnel address. Checks, from host a:
# an HTTP fetch of a random file through SOCKS5 (IPv4 address, and an IP literal sent as a
# host name) and through the forward, each with a matching SHA-256; a refused port through
# SOCKS5; another local user refused by the proxy (its owner and root served); and a ping
# from b to a's userspace stack. Prints "userspace ok" on success.
# Uses curl when installed (NO_CURL=1 forces the Python client, socks5_fetch.py).
source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
MB=${MB:-10}
HTTP_PORT=8000
SOCKS=127.0.0.1:1080
FWD=127.0.0.1:8080

setup_hosts
start_ours_userspace a --socks5 "$SOCKS" --forward "$FWD=$TUN_B:$HTTP_PORT"
case "$1" in
  ours) start_ours b ;;
  wggo) start_wggo b ;;
  boringtun) start_boringtun b ;;
  *) echo "unknown implementation $1" >&2; exit 2 ;;
esac
if ip -n "$NS_A" -o link show | grep -v -e ': lo:' -e "${NS_PREFIX}va" | grep -q .; then
  echo "host a has a network interface besides lo and its veth:" >&2; ip -n "$NS_A" link show >&2; exit 1
fi
ps -o user= -p "${PIDS[0]}" | grep -qx nobody || { echo "codervpn on a is not running as nobody" >&2; exit 1; }

mkdir -p "$WORK/www"
head -c "${MB}M" /dev/urandom > "$WORK/www/payload"
want=$(sha256sum "$WORK/www/payload" | cut -d' ' -f1)
ip netns exec "$NS_B" python3 -m http.server "$HTTP_PORT" --bind "$TUN_B" --directory "$WORK/www" > "$WORK/http.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do
  ip netns exec "$NS_B" python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)' "$TUN_B" "$HTTP_PORT" 2>/dev/null && break
  sleep 0.1
done

fail() { echo "$*" >&2; echo "--- a (userspace) log:" >&2; cat "$WORK/a-us.log" >&2; exit 1; }

# fetch MODE URL OUT: MODE is socks5 (address), socks5h (host name field) or direct.
# curl if installed, else a small Python SOCKS5/HTTP client.
fetch() {
  local mode=$1 url=$2 out=$3
  if [ -z "${NO_CURL:-}" ] && command -v curl >/dev/null 2>&1; then
    local proxy=()
    case "$mode" in
      socks5) proxy=(--socks5 "$SOCKS") ;;
      socks5h) proxy=(--socks5-hostname "$SOCKS") ;;
    esac
    ip netns exec "$NS_A" curl -sS --fail --max-time 60 "${proxy[@]}" -o "$out" -w '%{speed_download}' "$url"
  else
    ip netns exec "$NS_A" python3 "$(dirname "$0")/socks5_fetch.py" "$mode" "$SOCKS" "$url" "$out"
  fi
}

check_fetch() { # check_fetch MODE URL LABEL
  local out="$WORK/got-$1" speed
  speed=$(fetch "$1" "$2" "$out") || fail "$3: fetch failed"
  got=$(sha256sum "$out" | cut -d' ' -f1)
  [ "$got" = "$want" ] || fail "$3: sha256 mismatch ($(stat -c %s "$out") bytes)"
  awk -v l="$3" -v n="$(stat -c %s "$out")" -v s="$speed" 'BEGIN { printf "%s: %d bytes, sha256 ok, %.1f MB/s\n", l, n, s / 1e6 }'
}

check_fetch socks5 "http://$TUN_B:$HTTP_PORT/payload" "socks5 fetch"
check_fetch socks5h "http://$TUN_B:$HTTP_PORT/payload" "socks5 fetch by IP-literal host name"
check_fetch direct "http://$FWD/payload" "forward fetch"

# Nothing listens on b's port 8001: b's kernel resets the SYN, SOCKS5 replies 0x05.
if [ -z "${NO_CURL:-}" ] && command -v curl >/dev/null 2>&1; then
  err=$(ip netns exec "$NS_A" curl -sS --max-time 30 --socks5 "$SOCKS" "http://$TUN_B:8001/" 2>&1) && fail "fetch from a closed port succeeded"
  echo "$err" | grep -qi -e 'refused' -e '(5)' || fail "closed port: unexpected curl error: $err"
else
  ip netns exec "$NS_A" python3 "$(dirname "$0")/socks5_fetch.py" expect-refused "$SOCKS" "http://$TUN_B:8001/" /dev/null || fail "closed port was not refused"
fi
echo "closed port: connection refused ok"

# Who may use the proxy (issue #17): its owner (nobody, who runs it) and root; another
# local user is refused before any SOCKS5 byte. (curl: the check needs a client every
# user can run; .ci/run installs it.)
as_user() { local u=$1; shift; ip netns exec "$NS_A" setpriv --reuid "$u" --regid "$u" --clear-groups "$@"; }
as_user 12345 curl -sS --max-time 10 --socks5 "$SOCKS" -o /dev/null "http://$TUN_B:$HTTP_PORT/payload" 2> "$WORK/stranger.err" \
  && fail "local user 12345 fetched through nobody's proxy"
grep -q "SOCKS5 connection refused: local user 12345 may not use this SOCKS5 proxy" "$WORK/a-us.log" \
  || fail "no refusal of user 12345 logged: $(cat "$WORK/stranger.err")"
as_user 65534 curl -sS --max-time 30 --socks5 "$SOCKS" -o /dev/null "http://$TUN_B:$HTTP_PORT/payload" \
  || fail "the proxy's owner (nobody, 65534) was refused"
echo "proxy access: another local user refused, the owner and root served"

ip netns exec "$NS_B" ping -c 3 -i 0.2 -W 5 "$TUN_A" > "$WORK/ping" || fail "ping b -> a's userspace stack failed"
echo "ping b -> userspace a ok"
echo "userspace ok: ours-userspace <-> $1"
