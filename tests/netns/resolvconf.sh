#!/usr/bin/env bash
# DNS through resolvconf(8) (issue #14): on a machine where resolvconf generates
# /etc/resolv.conf — Debian's resolvconf package or openresolv, both real, from Debian's
# archive — `codervpn up` adds a record of its own, so glibc (getent, curl) resolves
# workspace names, and a DHCP renewal while it runs keeps our resolver first. On exit the
# record goes and the file is as before, byte for byte; after a SIGKILL the next start
# deletes the dead run's record.
#
# Host a gets a private mount namespace (lib.sh's private_mounts: /etc and /usr overlays
# with the package's files added, /run a tmpfs), so the host's own resolver configuration
# is never touched. `up` and every check run inside it.
#
# usage: resolvconf.sh debian|openresolv
# Needs root, iproute2, util-linux (unshare, nsenter), overlayfs, curl, python3, and the
# packages' .deb files in $RESOLVCONF_DEBS (.ci/run: `apt-get download resolvconf
# openresolv` into /var/cache/codervpn-ci/debs).

FLAVOUR=${1:?usage: resolvconf.sh debian|openresolv}
source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
DEBS=${RESOLVCONF_DEBS:-/var/cache/codervpn-ci/debs}
case "$FLAVOUR" in
  debian) PKG=resolvconf ;;
  openresolv) PKG=openresolv ;;
  *) echo "unknown flavour $FLAVOUR"; exit 2 ;;
esac
DEB=$(ls "$DEBS/${PKG}"_*.deb 2>/dev/null | head -1)
[ -n "$DEB" ] || { echo "FAIL: no ${PKG}_*.deb in $DEBS (.ci/run downloads it)"; exit 1; }
setup_hosts
umask 022

X=$WORK/pkg; mkdir -p "$X"
dpkg-deb -x "$DEB" "$X"
private_mounts "$X"

if [ "$FLAVOUR" = debian ]; then
  # What the package's postinst and tmpfiles set up on a real system.
  in_a bash -c 'mkdir -p /run/resolvconf/interface && : > /run/resolvconf/enable-updates &&
    ln -sfn /run/resolvconf/resolv.conf /etc/resolv.conf'
else
  in_a rm -f /etc/resolv.conf
fi
in_a resolvconf --version | sed -n 1p
# The LAN resolver, as a DHCP client hands it to resolvconf; it answers every A name with
# 192.0.2.99.
ip -n "$NS_A" addr add 192.0.2.53/32 dev lo
ip -n "$NS_A" addr add 192.0.2.54/32 dev lo
ip netns exec "$NS_A" python3 "$(dirname "$0")/tiny_dns.py" 192.0.2.53 53 192.0.2.99 &
PIDS+=($!)
ip netns exec "$NS_A" python3 "$(dirname "$0")/tiny_dns.py" 192.0.2.54 53 192.0.2.99 &
PIDS+=($!)
printf 'nameserver 192.0.2.53\nsearch lan.example\n' | in_a resolvconf -a eth0.dhclient
in_a cat /etc/resolv.conf > "$WORK/resolv.before"
echo "--- resolv.conf before"; cat "$WORK/resolv.before"
active() { in_a grep -v '^#' /etc/resolv.conf | grep -v '^$' | tr '\n' '|'; }
records() { in_a resolvconf -i | tr ' ' '\n' | grep codervpn || true; }

start_testbed --workspaces 1
AGENT_IP=$(json 'd["agents"][0]["ip"]')
FQDN=$(json 'd["agents"][0]["fqdn"][1]'); FQDN=${FQDN%.}    # main.dev1.me.coder

start_up
wait_log "resolvconf lists the tunnel's resolver first" 10 || fail "no resolvconf record"
[ "$(records)" = "tun0.codervpn.$UP_PID" ] || fail "records while up: $(in_a resolvconf -i)"
ACTIVE=$(active)
case "$ACTIVE" in
  "nameserver fd60:627a:a42b::53|nameserver 192.0.2.53|search lan.example|"|\
  "search lan.example|nameserver fd60:627a:a42b::53|nameserver 192.0.2.53|") ;;
  *) fail "resolv.conf while up: $ACTIVE" ;;
esac
echo "resolv.conf while up: $ACTIVE"
GOT=$(in_a getent ahostsv6 "$FQDN" | awk 'NR==1 {print $1}')
[ "$GOT" = "$AGENT_IP" ] || fail "getent ahostsv6 $FQDN gave '$GOT', want $AGENT_IP"
PAGE=$(in_a curl -s --max-time 10 "http://$FQDN/") || fail "curl http://$FQDN/"
echo "$PAGE" | grep -q "Hello from agent main of workspace dev1" || fail "page: $PAGE"
START=$(date +%s%N)
GOT=$(in_a getent ahostsv4 www.example.org | awk 'NR==1 {print $1}')
MS=$(( ($(date +%s%N) - START) / 1000000 ))
[ "$GOT" = 192.0.2.99 ] || fail "www.example.org through the LAN resolver gave '$GOT'"
[ "$MS" -lt 900 ] || fail "www.example.org took $MS ms (a timeout, not a REFUSED fall-through)"
echo "getent and curl by name ok; other names reach the LAN resolver ($MS ms)"

# A DHCP renewal with a new LAN resolver: resolvconf regenerates the file, ours stays first.
printf 'nameserver 192.0.2.54\nsearch lan.example\n' | in_a resolvconf -a eth0.dhclient
FIRST=$(in_a grep -m1 '^nameserver' /etc/resolv.conf)
[ "$FIRST" = "nameserver fd60:627a:a42b::53" ] || fail "after a renewal the first server is '$FIRST': $(active)"
in_a grep -q '^nameserver 192.0.2.54' /etc/resolv.conf || fail "the renewal's server is missing: $(active)"
GOT=$(in_a getent ahostsv6 "$FQDN" | awk 'NR==1 {print $1}')
[ "$GOT" = "$AGENT_IP" ] || fail "after a renewal getent gave '$GOT'"
echo "a DHCP renewal while up keeps the tunnel's resolver first"
printf 'nameserver 192.0.2.53\nsearch lan.example\n' | in_a resolvconf -a eth0.dhclient

stop_up || fail "up exited with an error"
[ -z "$(records)" ] || fail "record left after exit: $(in_a resolvconf -i)"
in_a cat /etc/resolv.conf | cmp - "$WORK/resolv.before" || fail "resolv.conf after exit: $(in_a cat /etc/resolv.conf)"
echo "record deleted and resolv.conf as before on exit"

# Killed: the record stays; the next start deletes it before anything else.
start_up
wait_log "resolvconf lists the tunnel's resolver first" 10 || fail "no record (2nd run)"
KILLED=$UP_PID
kill -KILL "$KILLED"; wait "$KILLED" 2>/dev/null || true
[ "$(records)" = "tun0.codervpn.$KILLED" ] || fail "after SIGKILL the records are: $(in_a resolvconf -i)"
start_up
wait_log "resolvconf record a codervpn that is gone (pid $KILLED) left behind" 10 || fail "no recovery at the next start"
[ "$(records)" = "tun0.codervpn.$UP_PID" ] || fail "records after recovery: $(in_a resolvconf -i)"
stop_up || fail "up exited with an error (3rd run)"
[ -z "$(records)" ] || fail "records after SIGKILL + restart + exit: $(in_a resolvconf -i)"
in_a cat /etc/resolv.conf | cmp - "$WORK/resolv.before" || fail "resolv.conf after SIGKILL + restart: $(in_a cat /etc/resolv.conf)"
echo "a killed run's record deleted at the next start"
echo "resolvconf ok ($FLAVOUR)"
