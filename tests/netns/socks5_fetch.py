"""HTTP/1.0 GET through a SOCKS5 proxy (or directly), for machines without curl.

socks5_fetch.py MODE PROXY URL OUT
  MODE: socks5 (IPv4/IPv6 address request), socks5h (host-name request), direct (no
        proxy), expect-refused (exit 0 only if the proxy answers 0x05)
Writes the body to OUT and prints the speed in bytes per second, like curl's
%{speed_download}.
"""
import ipaddress
import socket
import struct
import sys
import time
from urllib.parse import urlsplit


def socks_connect(proxy, host, port, by_name):
    phost, pport = proxy.rsplit(":", 1)
    s = socket.create_connection((phost, int(pport)), timeout=60)
    s.sendall(b"\x05\x01\x00")
    if s.recv(2) != b"\x05\x00":
        raise SystemExit("proxy refused the no-auth method")
    if by_name:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    else:
        ip = ipaddress.ip_address(host)
        addr = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    s.sendall(b"\x05\x01\x00" + addr + struct.pack(">H", port))
    head = recv_exact(s, 4)
    rest = {1: 6, 4: 18}.get(head[3])
    if rest is None:
        rest = recv_exact(s, 1)[0] + 2
    recv_exact(s, rest)
    return s, head[1]


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            raise SystemExit("proxy closed the connection")
        out += b
    return out


def main():
    mode, proxy, url, out = sys.argv[1:5]
    u = urlsplit(url)
    host, port = u.hostname, u.port or 80
    start = time.monotonic()
    if mode == "direct":
        s = socket.create_connection((host, port), timeout=60)
    else:
        s, rep = socks_connect(proxy, host, port, mode == "socks5h")
        if mode == "expect-refused":
            sys.exit(0 if rep == 5 else 1)
        if rep != 0:
            raise SystemExit(f"SOCKS5 reply {rep}")
    s.sendall(f"GET {u.path or '/'} HTTP/1.0\r\nHost: {u.netloc}\r\n\r\n".encode())
    data = bytearray()
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        data += b
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        raise SystemExit(f"bad response: {head[:100]!r}")
    with open(out, "wb") as f:
        f.write(body)
    print(len(body) / max(time.monotonic() - start, 1e-6))


main()
