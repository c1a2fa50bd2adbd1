"""An independent STUN client for the testbed's STUN server: aioice's RFC 5389/8489 codec
(`aioice.stun`, from aiortc), not ours.

    python3 stun_client.py HOST PORT

Sends a binding request built by aioice as Tailscale builds it (SOFTWARE "tailnode", then
FINGERPRINT) and checks that the answer, parsed by aioice, is a binding success response
for the same transaction whose XOR-MAPPED-ADDRESS is this socket's address. Then sends
aioice's plain binding request (no SOFTWARE) and checks that it gets no answer: the server
answers Tailscale clients only, as tailscale's `stun.ParseBindingRequest` does.
Prints "stun ok <mapped address>".
"""

import socket
import sys

from aioice import stun


def main() -> None:
    server = (sys.argv[1], int(sys.argv[2]))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)

    req = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    req.attributes["SOFTWARE"] = "tailnode"
    req.add_fingerprint()
    s.sendto(bytes(req), server)
    data, _ = s.recvfrom(2048)
    resp = stun.parse_message(data)
    assert resp.message_method == stun.Method.BINDING, resp
    assert resp.message_class == stun.Class.RESPONSE, resp
    assert resp.transaction_id == req.transaction_id, resp
    mapped = resp.attributes["XOR-MAPPED-ADDRESS"]
    assert tuple(mapped) == s.getsockname(), (mapped, s.getsockname())

    plain = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    s.sendto(bytes(plain), server)
    s.settimeout(0.3)
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        pass
    else:
        raise AssertionError("a request without SOFTWARE tailnode was answered: %r" % data)
    print("stun ok %s:%d" % tuple(mapped))


if __name__ == "__main__":
    main()
