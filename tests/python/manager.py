#!/usr/bin/env python3
"""A CoderVPN manager written against Google's protobuf runtime, not our code.

It compiles proto/schemas/vpn.proto with Google's protoc (grpcio-tools), then either

  manager.py exchange CODERVPN_BINARY
      spawns `CODERVPN_BINARY vpn-daemon run` on two real pipes and drives the whole
      start / get_peer_update / wake / stop exchange by hand: handshake lines, 4-byte
      big-endian lengths, protobuf bodies. Every frame the tunnel writes must re-encode
      to the very same bytes with Google's encoder.

  manager.py fixtures DIR
      writes fully populated messages of every kind as DIR/<name>.bin, for the Rust side
      to decode and re-encode byte for byte.

  manager.py session CODERVPN_BINARY URL TOKEN AGENT_NAME AGENT_IP (userspace|tun)
      a manager doing the real job: starts `vpn-daemon run` against a Coder deployment
      (the testbed), answers its NetworkSettingsRequests (in tun mode: creates the TUN,
      passes its fd in StartRequest and applies the settings with `ip`), collects the
      PeerUpdates, then sends 10 MiB through the agent's echo service — over the TUN, or
      in userspace mode through the daemon's SOCKS5 proxy by DNS name — and stops.

Exits non-zero with a message on the first deviation.
"""

import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "..", "..", "proto", "schemas")


def load_vpn_pb2():
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="codervpn-pb2-")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{SCHEMAS}", f"-I{include}", f"--python_out={out}", "vpn.proto"])
    if rc != 0:
        sys.exit(f"protoc failed on vpn.proto ({rc})")
    sys.path.insert(0, out)
    import vpn_pb2

    return vpn_pb2


def fail(msg):
    sys.exit(f"manager.py: {msg}")


class Pipe:
    def __init__(self, rfd, wfd):
        self.r = os.fdopen(rfd, "rb", buffering=0)
        self.w = os.fdopen(wfd, "wb", buffering=0)

    def read_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.r.read(n - len(buf))
            if not chunk:
                return None if not buf else fail(f"EOF inside a frame after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def header(self):
        line = b""
        while not line.endswith(b"\n"):
            b = self.r.read(1)
            if not b:
                fail(f"EOF during the handshake after {line!r}")
            line += b
            if len(line) > 256:
                fail("tunnel header longer than 256 bytes")
        return line

    def send(self, msg):
        body = msg.SerializeToString()
        self.w.write(struct.pack(">I", len(body)) + body)

    def recv_raw(self):
        prefix = self.read_exact(4)
        if prefix is None:
            return None
        (n,) = struct.unpack(">I", prefix)
        if n > 0x1000000:
            fail(f"frame length {n} over 16 MiB")
        return self.read_exact(n) if n else b""


def exchange(binary):
    pb = load_vpn_pb2()
    m2t_r, m2t_w = os.pipe()
    t2m_r, t2m_w = os.pipe()
    child = subprocess.Popen(
        [binary, "vpn-daemon", "run", "--rpc-read-fd", str(m2t_r), "--rpc-write-fd", str(t2m_w)],
        pass_fds=(m2t_r, t2m_w),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(m2t_r)
    os.close(t2m_w)
    pipe = Pipe(t2m_r, m2t_w)

    pipe.w.write(b"codervpn manager 1.3\n")
    got = pipe.header()
    if got != b"codervpn tunnel 1.3\n":
        fail(f"tunnel header {got!r}")

    logs = []

    def recv():
        """Next non-log TunnelMessage; checks byte-exact re-encoding of every frame."""
        while True:
            raw = pipe.recv_raw()
            if raw is None:
                return None
            msg = pb.TunnelMessage()
            msg.ParseFromString(raw)
            if msg.SerializeToString() != raw:
                fail(f"frame does not re-encode identically: {raw.hex()} vs {msg.SerializeToString().hex()}")
            if msg.WhichOneof("msg") == "log":
                if msg.HasField("rpc"):
                    fail("a one-way Log carries an rpc field")
                logs.append(msg.log)
                continue
            return msg

    def request(msg_id, **kw):
        m = pb.ManagerMessage(rpc=pb.RPC(msg_id=msg_id), **kw)
        pipe.send(m)
        reply = recv()
        if reply is None:
            fail(f"EOF instead of the reply to request {msg_id}")
        if not reply.HasField("rpc") or reply.rpc.response_to != msg_id or reply.rpc.msg_id != 0:
            fail(f"reply to {msg_id} has rpc {reply.rpc}")
        return reply

    start = pb.StartRequest(
        tunnel_file_descriptor=-1,
        coder_url="https://coder.example.com",
        api_token="python-secret-token",
        headers=[pb.StartRequest.Header(name="X-Test-Header", value="test")],
        device_id="device001",
        device_os="Linux",
        coder_desktop_version="0.0.0-python",
    )
    r = request(1, start=start)
    if r.WhichOneof("msg") != "start":
        fail(f"expected StartResponse, got {r}")
    # coder.example.com cannot be reached from a test machine: start must fail, saying so.
    if r.start.success or not r.start.error_message.startswith("failed to start connection: "):
        fail(f"unexpected StartResponse {r.start}")

    r = request(2, get_peer_update=pb.GetPeerUpdate())
    if r.WhichOneof("msg") != "peer_update" or r.peer_update.ByteSize() != 0:
        fail(f"expected an empty PeerUpdate, got {r}")

    r = request(3, wake=pb.WakeRequest())
    if r.WhichOneof("msg") != "wake":
        fail(f"expected a WakeResponse, got {r}")

    # A request with no payload gets a reply with only response_to set.
    r = request(4)
    if r.WhichOneof("msg") is not None:
        fail(f"expected a bare reply, got {r}")

    r = request(5, stop=pb.StopRequest())
    if r.WhichOneof("msg") != "stop" or not r.stop.success:
        fail(f"expected StopResponse(success), got {r}")
    if pipe.recv_raw() is not None:
        fail("a frame followed the StopResponse")

    rc = child.wait(timeout=20)
    stderr = child.stderr.read().decode(errors="replace")
    if rc != 0:
        fail(f"daemon exited {rc}: {stderr}")
    for log in logs:
        if log.level not in range(0, 5) or not log.logger_names or log.logger_names[0] != "vpn":
            fail(f"malformed Log {log}")
        if "python-secret-token" in str(log):
            fail("the api token leaked into a Log message")
    if not any(l.message == "starting tunnel" for l in logs):
        fail(f"no 'starting tunnel' Log among {[l.message for l in logs]}")
    if "python-secret-token" in stderr:
        fail("the api token leaked to stderr")
    print(f"exchange ok: 5 requests, {len(logs)} Log messages, every frame byte-exact")


def fixtures(out):
    pb = load_vpn_pb2()
    from google.protobuf import duration_pb2, timestamp_pb2

    os.makedirs(out, exist_ok=True)
    v6 = pb.NetworkSettingsRequest.IPv6Settings
    v4 = pb.NetworkSettingsRequest.IPv4Settings
    agent = pb.Agent(
        id=bytes(range(16)),
        name="agent1",
        workspace_id=bytes(range(16, 32)),
        fqdn=["ws.coder.", "agent1.ws.me.coder.", "agent1.ws.testy.coder."],
        ip_addrs=["fd60:627a:a42b:607:809:a0b:c0d:e0f"],
        last_handshake=timestamp_pb2.Timestamp(seconds=-62135596800, nanos=0),
        last_ping=pb.LastPing(
            latency=duration_pb2.Duration(seconds=0, nanos=100_000_000),
            did_p2p=True,
            preferred_derp="Coder Region",
            preferred_derp_latency=duration_pb2.Duration(seconds=0, nanos=5_000_000),
        ),
    )
    messages = {
        "tunnel_peer_update": pb.TunnelMessage(
            peer_update=pb.PeerUpdate(
                upserted_workspaces=[pb.Workspace(id=bytes(range(16, 32)), name="ws", status=pb.Workspace.RUNNING)],
                upserted_agents=[agent],
                deleted_workspaces=[pb.Workspace(id=b"\xff" * 16, name="old", status=pb.Workspace.DELETED)],
                deleted_agents=[pb.Agent(id=b"\xee" * 16, name="gone", workspace_id=b"\xff" * 16)],
            )
        ),
        "tunnel_network_settings": pb.TunnelMessage(
            rpc=pb.RPC(msg_id=7),
            network_settings=pb.NetworkSettingsRequest(
                tunnel_overhead_bytes=80,
                mtu=1280,
                dns_settings=pb.NetworkSettingsRequest.DNSSettings(
                    servers=["fd60:627a:a42b::53"],
                    search_domains=["example.com"],
                    domain_name="coder",
                    match_domains=["coder"],
                    match_domains_no_search=True,
                ),
                tunnel_remote_address="127.0.0.1",
                ipv4_settings=v4(
                    addrs=["100.64.0.1"],
                    subnet_masks=["255.255.255.255"],
                    router="100.64.0.2",
                    included_routes=[v4.IPv4Route(destination="192.168.0.0", mask="255.255.255.0", router="")],
                    excluded_routes=[v4.IPv4Route(destination="10.0.0.0", mask="255.0.0.0", router="")],
                ),
                ipv6_settings=v6(
                    addrs=["fd60:627a:a42b::1"],
                    prefix_lengths=[128],
                    included_routes=[v6.IPv6Route(destination="fd60:627a:a42b::", prefix_length=48, router="")],
                    excluded_routes=[v6.IPv6Route(destination="2001:db8::", prefix_length=32, router="")],
                ),
            ),
        ),
        "tunnel_log": pb.TunnelMessage(
            log=pb.Log(
                level=pb.Log.CRITICAL,
                message="message length exceeds max",
                logger_names=["vpn", "proto"],
                fields=[pb.Log.Field(name="error", value='"x y"')],
            )
        ),
        "tunnel_start": pb.TunnelMessage(rpc=pb.RPC(response_to=1), start=pb.StartResponse(success=False, error_message="missing api token")),
        "tunnel_stop": pb.TunnelMessage(rpc=pb.RPC(response_to=2), stop=pb.StopResponse(success=True)),
        "tunnel_wake": pb.TunnelMessage(rpc=pb.RPC(response_to=3), wake=pb.WakeResponse()),
        "manager_start": pb.ManagerMessage(
            rpc=pb.RPC(msg_id=1),
            start=pb.StartRequest(
                tunnel_file_descriptor=2,
                coder_url="https://coder.example.com",
                api_token="token",
                headers=[pb.StartRequest.Header(name="X-A", value="1"), pb.StartRequest.Header(name="X-A", value="2")],
                device_id="device001",
                device_os="macOS",
                coder_desktop_version="0.24.8",
            ),
        ),
        "manager_network_settings": pb.ManagerMessage(
            rpc=pb.RPC(response_to=7), network_settings=pb.NetworkSettingsResponse(success=False, error_message="nope")
        ),
        "manager_get_peer_update": pb.ManagerMessage(rpc=pb.RPC(msg_id=2), get_peer_update=pb.GetPeerUpdate()),
        "manager_stop": pb.ManagerMessage(rpc=pb.RPC(msg_id=3), stop=pb.StopRequest()),
        "manager_wake": pb.ManagerMessage(rpc=pb.RPC(msg_id=4), wake=pb.WakeRequest()),
    }
    for name, msg in messages.items():
        with open(os.path.join(out, name + ".bin"), "wb") as f:
            f.write(msg.SerializeToString())
    print(f"wrote {len(messages)} fixtures to {out}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "session":
        from session import session

        sys.exit(session(load_vpn_pb2(), Pipe, fail, *sys.argv[2:]))
    if len(sys.argv) != 3 or sys.argv[1] not in ("exchange", "fixtures"):
        sys.exit(__doc__)
    {"exchange": exchange, "fixtures": fixtures}[sys.argv[1]](sys.argv[2])
