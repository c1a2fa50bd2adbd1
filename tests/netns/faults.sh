#!/usr/bin/env bash
# The fault campaign's namespace half (issue #17): a TCP echo stream from `codervpn up` in
# host a to an agent of the testbed in host b, on the direct UDP path, spans each fault and
# comes back whole (echo_stream.py checks its SHA-256):
#   loss    — host b drops half of the UDP packets from a, at random, for 10 s;
#   address — host a's address changes (the old one removed, a new one added) mid-stream.
#
#   usage: faults.sh loss|address
# Needs root, iproute2, nftables, wireguard-tools (lib.sh makes keys), python3.

FAULT=${1:?usage: faults.sh loss|address}
source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
setup_hosts

up_direct_to_one_agent

start_echo_stream "$AGENT_IP"
sleep 3
case "$FAULT" in
  loss)
    # One datagram per packet on the wire: with UDP GSO a whole batch is one packet to
    # netfilter, and the loss would hit batches, not datagrams.
    ip -n "$NS_A" link set dev "${NS_PREFIX}va" gso_max_segs 1
    ip netns exec "$NS_B" nft -f - <<NFT
table inet cvpnloss {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr $VETH_A meta l4proto udp numgen random mod 2 0 counter drop
  }
}
NFT
    sleep 10
    DROPPED=$(ip netns exec "$NS_B" nft list table inet cvpnloss | grep -o 'packets [0-9]*' | awk '{print $2}')
    ip netns exec "$NS_B" nft delete table inet cvpnloss
    [ "${DROPPED:-0}" -gt 0 ] || fail "the loss rule dropped nothing"
    echo "50 % of a's UDP datagrams dropped for 10 s: $DROPPED"
    ;;
  address)
    NEW=10.201.0.3
    FROM=$(log_lines)
    ip -n "$NS_A" addr del "$VETH_A/24" dev "${NS_PREFIX}va"
    ip -n "$NS_A" addr add "$NEW/24" dev "${NS_PREFIX}va"
    echo "host a: $VETH_A removed, $NEW added"
    wait_log "is direct via $VETH_B:" 30 "$FROM" || echo "(no new direct path logged; the stream decides)"
    ;;
  *) echo "unknown fault $FAULT"; exit 2 ;;
esac
wait "$STREAM_PID" || fail "the stream broke across the $FAULT fault: $(cat "$WORK/stream.out")"
cat "$WORK/stream.out"
ip netns exec "$NS_A" ping -6 -c 3 -i 0.2 -W 2 "$AGENT_IP" > /dev/null || fail "the agent is unreachable after the $FAULT fault"
grep -o "path to [^ ]* is [^(]*" "$WORK/up.log" | sed "s/^/path change: /" | tail -5
stop_up || fail "up exited with an error"
echo "faults ok ($FAULT)"
