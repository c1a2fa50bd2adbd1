"""`manager.py session`: a whole tunnel session driven by a manager we wrote in Python
against Google's protobuf runtime (see manager.py for the framing helpers)."""

import fcntl
import hashlib
import os
import socket
import struct
import subprocess
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
ECHO_PORT = 7
MIB = 1024 * 1024


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_inheritable(fd, True)
    return fd


def ip(*args):
    subprocess.run(["ip", *args], check=True)


def apply_settings(s, iface):
    """Applies a NetworkSettingsRequest to the TUN with ip(8), as a Linux manager would."""
    if s.mtu:
        ip("link", "set", "dev", iface, "mtu", str(s.mtu))
    ip("link", "set", "dev", iface, "up")
    if s.HasField("ipv6_settings"):
        v6 = s.ipv6_settings
        for addr, plen in zip(v6.addrs, v6.prefix_lengths):
            ip("-6", "addr", "add", f"{addr}/{plen}", "dev", iface)
        for r in v6.included_routes:
            ip("-6", "route", "replace", f"{r.destination}/{r.prefix_length}", "dev", iface)


def socks5_connect(proxy, host, port):
    """CONNECT by host name (the proxy resolves it: socks5h)."""
    s = socket.create_connection(proxy, timeout=30)
    s.sendall(b"\x05\x01\x00")
    if s.recv(2) != b"\x05\x00":
        raise RuntimeError("SOCKS5 greeting refused")
    name = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
    head = s.recv(4)
    if len(head) < 4 or head[1] != 0:
        raise RuntimeError(f"SOCKS5 CONNECT to {host}:{port} refused: {head!r}")
    rest = {1: 4, 4: 16}.get(head[3], 0) + 2
    s.recv(rest)
    return s


def echo_10mib(sock):
    data = os.urandom(10 * MIB)

    def send():
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send)
    t.start()
    got = bytearray()
    while True:
        b = sock.recv(1 << 16)
        if not b:
            break
        got += b
    t.join()
    return hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), len(got)


def session(pb, Pipe, fail, binary, url, token, agent_name, agent_ip, mode):
    env = dict(os.environ)
    socks = None
    tun_fd, iface = -1, None
    pass_fds = []
    if mode == "tun":
        iface = f"pym{os.getpid() % 100000}"
        tun_fd = open_tun(iface)
        pass_fds.append(tun_fd)
    else:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        socks = ("127.0.0.1", probe.getsockname()[1])
        probe.close()
        env["CODERVPN_SOCKS5"] = f"{socks[0]}:{socks[1]}"
    m2t_r, m2t_w = os.pipe()
    t2m_r, t2m_w = os.pipe()
    child = subprocess.Popen(
        [binary, "vpn-daemon", "run", "--rpc-read-fd", str(m2t_r), "--rpc-write-fd", str(t2m_w)],
        pass_fds=(m2t_r, t2m_w, *pass_fds),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(m2t_r)
    os.close(t2m_w)
    pipe = Pipe(t2m_r, m2t_w)
    pipe.w.write(b"codervpn manager 1.3\n")
    if pipe.header() != b"codervpn tunnel 1.3\n":
        fail("bad tunnel header")

    settings, updates = [], []

    def recv_until_reply(msg_id):
        """Reads frames, servicing NetworkSettingsRequests, until the reply to msg_id."""
        while True:
            raw = pipe.recv_raw()
            if raw is None:
                fail(f"EOF waiting for the reply to {msg_id}: {child.stderr.read().decode(errors='replace')[-2000:]}")
            msg = pb.TunnelMessage()
            msg.ParseFromString(raw)
            kind = msg.WhichOneof("msg")
            if kind == "network_settings":
                s = msg.network_settings
                settings.append(s)
                if iface:
                    apply_settings(s, iface)
                pipe.send(pb.ManagerMessage(
                    rpc=pb.RPC(response_to=msg.rpc.msg_id),
                    network_settings=pb.NetworkSettingsResponse(success=True)))
            elif kind == "peer_update":
                if msg.HasField("rpc") and msg.rpc.response_to == msg_id:
                    return msg
                updates.append(msg.peer_update)
            elif kind == "log":
                continue
            elif msg.rpc.response_to == msg_id:
                return msg

    pipe.send(pb.ManagerMessage(rpc=pb.RPC(msg_id=1), start=pb.StartRequest(
        tunnel_file_descriptor=tun_fd, coder_url=url, api_token=token)))
    r = recv_until_reply(1)
    if not r.start.success:
        fail(f"start failed: {r.start.error_message}")
    if tun_fd >= 0:
        os.close(tun_fd)  # the daemon holds its own copy now
    if len(settings) != 2 or not settings[0].HasField("ipv6_settings") or not settings[1].HasField("dns_settings"):
        fail(f"expected router then DNS settings, got {settings}")
    # PeerUpdates arrive one-way from the workspace stream; get_peer_update answers with
    # the current snapshot. Either must name the agent.
    deadline = time.time() + 20
    agents = {}
    msg_id = 10
    while time.time() < deadline and agent_ip not in agents:
        msg_id += 1
        pipe.send(pb.ManagerMessage(rpc=pb.RPC(msg_id=msg_id), get_peer_update=pb.GetPeerUpdate()))
        snap = recv_until_reply(msg_id)
        for u in [*updates, snap.peer_update]:
            for a in u.upserted_agents:
                for addr in a.ip_addrs:
                    agents[addr] = a
        if agent_ip not in agents:
            time.sleep(0.2)
    if not updates:
        fail("no one-way PeerUpdate arrived")
    if agent_ip not in agents:
        fail(f"agent {agent_ip} never reported; got {list(agents)}")
    a = agents[agent_ip]
    if a.name != agent_name or not all(f.endswith(".") for f in a.fqdn):
        fail(f"agent entry {a}")
    if a.last_handshake.seconds != -62135596800 and a.last_handshake.seconds <= 0:
        fail(f"last_handshake {a.last_handshake}")

    name = sorted(a.fqdn, key=len)[1].rstrip(".")  # <agent>.<workspace>.me.<suffix>
    for attempt in range(50):
        try:
            if socks:
                sock = socks5_connect(socks, name, ECHO_PORT)
            else:
                sock = socket.create_connection((agent_ip, ECHO_PORT), timeout=30)
            break
        except OSError:
            time.sleep(0.2)
    else:
        fail(f"cannot reach {agent_ip}:{ECHO_PORT}")
    ok, n = echo_10mib(sock)
    if not ok:
        fail(f"echo came back altered ({n} bytes)")

    pipe.send(pb.ManagerMessage(rpc=pb.RPC(msg_id=3), stop=pb.StopRequest()))
    r = recv_until_reply(3)
    if not r.stop.success:
        fail(f"stop failed: {r.stop}")
    if pipe.recv_raw() is not None:
        fail("a frame followed the StopResponse")
    rc = child.wait(timeout=20)
    if rc != 0:
        fail(f"daemon exited {rc}")
    if iface and os.path.exists(f"/sys/class/net/{iface}"):
        fail(f"{iface} still exists after stop")
    via = "SOCKS5 by name " + name if socks else "the TUN"
    print(f"session ok ({mode}): settings applied, agent {agent_name} reported, 10 MiB echoed via {via}, stopped")
    return 0
