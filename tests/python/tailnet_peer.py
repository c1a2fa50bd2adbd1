#!/usr/bin/env python3
"""A tailnet control client written from tailnet.md (§4, §13.1, §13.2) against Google's
protobuf runtime, not our code: WebSocket upgrade and framing by hand, yamux opened the
hashicorp way (window update + SYN, delta 0), dRPC frames by hand.

  tailnet_peer.py HOST PORT

Dials ws://HOST:PORT/api/v2/tailnet?version=2.3 with `Coder-Session-Token: python-peer`,
then makes these calls, one yamux stream each:

  RefreshResumeToken (unary), StreamDERPMaps and WorkspaceUpdates (server streams, read
  to the server's close-send), Coordinate (bidi: one request, one reply, close-send both
  ways), PostTelemetry (expects drpcmux's unknown-rpc error).

For every reply it prints `<name> <hex as received> <hex of Google's re-encoding>`; for the
Coordinate request it sent, `coordinate-request <hex of Google's encoding>`; for the error,
`unknown-rpc <code> <text>`; and finally `peer ok`. Exits non-zero on the first deviation
from the protocol.
"""

import base64
import hashlib
import os
import socket
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "..", "..", "proto", "schemas")
SERVICE = "/coder.tailnet.v2.Tailnet/"


def fail(msg):
    sys.exit(f"tailnet_peer.py: {msg}")


def load_tailnet_pb2():
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="codervpn-tailnet-pb2-")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{SCHEMAS}", f"-I{include}", f"--python_out={out}", "tailnet.proto"])
    if rc != 0:
        fail(f"protoc failed on tailnet.proto ({rc})")
    sys.path.insert(0, out)
    import tailnet_pb2

    return tailnet_pb2


# --- WebSocket (RFC 6455), client side ------------------------------------------------


class WebSocket:
    def __init__(self, host, port, path, headers):
        self.sock = socket.create_connection((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ] + [f"{k}: {v}" for k, v in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                fail("EOF during the websocket upgrade")
            head += chunk
        status = head.split(b"\r\n")[0]
        if b" 101 " not in status + b" ":
            fail(f"upgrade refused: {status!r}")
        want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        accept = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-accept:")]
        if accept != [want]:
            fail(f"bad Sec-WebSocket-Accept {accept!r}")
        self.pending = b""

    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                fail("websocket EOF")
            buf += chunk
        return buf

    def send_frame(self, opcode, payload):
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def recv_message(self):
        data = b""
        while True:
            b0, b1 = self.recv_exact(2)
            opcode, fin = b0 & 0x0F, b0 & 0x80
            if b1 & 0x80:
                fail("server frames must not be masked")
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self.recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.recv_exact(8))[0]
            payload = self.recv_exact(n)
            if opcode == 0x9:
                self.send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                fail("websocket closed by the server")
            if opcode == 0x1:
                fail("text message on the tailnet websocket")
            data += payload
            if fin:
                return data

    # The byte-stream view (tailnet.md §4.1): each write is one binary message; reads
    # concatenate messages.
    def write(self, data):
        self.send_frame(0x2, data)

    def read_exact(self, n):
        while len(self.pending) < n:
            self.pending += self.recv_message()
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


# --- yamux (hashicorp spec), client side -------------------------------------------------

DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8


class Yamux:
    def __init__(self, io):
        self.io = io
        self.next_id = 1
        self.inbound = {}
        self.closed = set()

    def send(self, typ, flags, sid, length, body=b""):
        self.io.write(struct.pack(">BBHII", 0, typ, flags, sid, length) + body)

    def open(self):
        sid = self.next_id
        self.next_id += 2
        self.inbound[sid] = b""
        self.send(WINDOW_UPDATE, SYN, sid, 0)
        return sid

    def write(self, sid, data):
        self.send(DATA, 0, sid, len(data), data)

    def pump(self):
        version, typ, flags, sid, length = struct.unpack(">BBHII", self.io.read_exact(12))
        if version != 0:
            fail(f"yamux version {version}")
        if typ == DATA:
            body = self.io.read_exact(length)
            if sid not in self.inbound:
                fail(f"data for unknown stream {sid}")
            self.inbound[sid] += body
        elif typ == PING:
            if flags & SYN:
                self.send(PING, ACK, 0, length)
        elif typ == GO_AWAY:
            fail(f"go away {length}")
        if typ in (DATA, WINDOW_UPDATE) and flags & (FIN | RST):
            self.closed.add(sid)

    def take(self, sid, n):
        while len(self.inbound[sid]) < n:
            if sid in self.closed:
                return None
            self.pump()
        out, self.inbound[sid] = self.inbound[sid][:n], self.inbound[sid][n:]
        return out


# --- dRPC ----------------------------------------------------------------------------

INVOKE, MESSAGE, ERROR, CANCEL, CLOSE, CLOSE_SEND = 1, 2, 3, 4, 5, 6


def varint(x):
    out = b""
    while x >= 0x80:
        out += bytes([(x & 0x7F) | 0x80])
        x >>= 7
    return out + bytes([x])


class Call:
    """One dRPC call as stream 1 on its own yamux stream."""

    def __init__(self, mux, method):
        self.mux = mux
        self.sid = mux.open()
        self.sent = 0
        self.last = (1, 0)
        self.send(INVOKE, (SERVICE + method).encode())

    def send(self, kind, data=b""):
        self.sent += 1
        frame = bytes([(kind << 1) | 1]) + varint(1) + varint(self.sent) + varint(len(data)) + data
        self.mux.write(self.sid, frame)

    def read_varint(self):
        value, shift = 0, 0
        while True:
            b = self.mux.take(self.sid, 1)
            if b is None:
                fail(f"stream {self.sid} ended inside a frame")
            value |= (b[0] & 0x7F) << shift
            if b[0] < 0x80:
                return value
            shift += 7

    def packet(self):
        """(kind, data) of the next packet, None at the end of the yamux stream."""
        data, kind = b"", None
        while True:
            c = self.mux.take(self.sid, 1)
            if c is None:
                if kind is not None:
                    fail("stream ended inside a packet")
                return None
            control = c[0]
            stream, message, n = self.read_varint(), self.read_varint(), self.read_varint()
            body = self.mux.take(self.sid, n) if n else b""
            if stream != 1:
                fail(f"reply on dRPC stream {stream}")
            if (stream, message) <= self.last and kind is None:
                fail(f"message id {message} not above {self.last}")
            self.last = (stream, message)
            kind = (control >> 1) & 0x3F
            data += body
            if control & 1:
                return kind, data

    def replies(self):
        """Messages until the server's close-send; fails on anything else."""
        out = []
        while True:
            p = self.packet()
            if p is None:
                fail("yamux stream ended before close-send")
            kind, data = p
            if kind == MESSAGE:
                out.append(data)
            elif kind == CLOSE_SEND:
                return out
            elif kind == ERROR:
                fail(f"error {struct.unpack('>Q', data[:8])[0]}: {data[8:].decode()}")
            else:
                fail(f"unexpected packet kind {kind}")


def show(name, raw, cls):
    msg = cls()
    msg.ParseFromString(raw)
    print(name, raw.hex(), msg.SerializeToString(deterministic=True).hex(), flush=True)


def main():
    if len(sys.argv) != 3:
        fail("usage: tailnet_peer.py HOST PORT")
    pb = load_tailnet_pb2()
    ws = WebSocket(sys.argv[1], int(sys.argv[2]), "/api/v2/tailnet?version=2.3", [("Coder-Session-Token", "python-peer")])
    mux = Yamux(ws)

    call = Call(mux, "RefreshResumeToken")
    call.send(MESSAGE, pb.RefreshResumeTokenRequest().SerializeToString())
    call.send(CLOSE_SEND)
    replies = call.replies()
    if len(replies) != 1:
        fail(f"unary call got {len(replies)} replies")
    show("refresh", replies[0], pb.RefreshResumeTokenResponse)

    call = Call(mux, "StreamDERPMaps")
    call.send(MESSAGE, pb.StreamDERPMapsRequest().SerializeToString())
    call.send(CLOSE_SEND)
    for raw in call.replies():
        show("derp", raw, pb.DERPMap)

    call = Call(mux, "WorkspaceUpdates")
    call.send(MESSAGE, pb.WorkspaceUpdatesRequest(workspace_owner_id=bytes(range(16))).SerializeToString())
    call.send(CLOSE_SEND)
    for raw in call.replies():
        show("update", raw, pb.WorkspaceUpdate)

    req = pb.CoordinateRequest()
    node = req.update_self.node
    node.id = 1234567890123
    node.as_of.seconds, node.as_of.nanos = 1700000000, 5
    node.key = b"np" + bytes(range(32))
    node.disco = "discokey:" + "ab" * 32
    node.preferred_derp = 999
    node.derp_latency["999-v4"] = 0.0125
    node.derp_forced_websocket[999] = "proxy"
    node.addresses.extend(["fd7a:115c:a1e0::1/128", "fd60:627a:a42b::1/128"])
    node.allowed_ips.extend(["fd7a:115c:a1e0::1/128"])
    node.endpoints.extend(["192.0.2.1:41641", "[2001:db8::1]:41641"])
    req.add_tunnel.id = bytes(range(100, 116))
    req.ready_for_handshake.add(id=bytes(range(16)))
    sent = req.SerializeToString(deterministic=True)
    call = Call(mux, "Coordinate")
    call.send(MESSAGE, sent)
    print("coordinate-request", sent.hex(), flush=True)
    p = call.packet()
    if p is None or p[0] != MESSAGE:
        fail(f"coordinate: want a message, got {p}")
    show("coordinate", p[1], pb.CoordinateResponse)
    call.send(CLOSE_SEND)
    if call.replies() != []:
        fail("coordinate: messages after close-send")

    call = Call(mux, "PostTelemetry")
    call.send(MESSAGE, b"")
    call.send(CLOSE_SEND)
    p = call.packet()
    if p is None or p[0] != ERROR:
        fail(f"PostTelemetry: want an error, got {p}")
    code = struct.unpack(">Q", p[1][:8])[0]
    print("unknown-rpc", code, p[1][8:].decode(), flush=True)
    if call.packet() is not None:
        fail("PostTelemetry: packets after the error")

    print("peer ok", flush=True)


if __name__ == "__main__":
    main()
