#!/usr/bin/env python3
"""UDP datagrams with checkable contents, for tests/netns/udp-gso.sh.

  udp_stream.py recv ADDR PORT          prints "received N intact M sizes S" after 2 s of quiet
  udp_stream.py send ADDR PORT N SIZE [--gso]

Datagram i carries i (8 bytes, big-endian) then SIZE-8 bytes derived from i, so the
receiver checks every byte. Datagrams go in bursts of 32, 2 ms apart; with
--gso a burst is one send (UDP_SEGMENT), as QUIC stacks send. The last datagram of the
stream is SIZE // 2 bytes.
"""
import socket
import sys
import time

SOL_UDP = 17
UDP_SEGMENT = 103


def body(i, size):
    pattern = bytes((i * 7 + k) % 251 for k in range(251))
    reps = pattern * (size // 251 + 1)
    return i.to_bytes(8, "big") + reps[: size - 8]


def recv(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (root)
    s.bind((addr, port))
    print("listening", flush=True)
    s.settimeout(30)
    got, intact, sizes = 0, 0, set()
    while True:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        s.settimeout(2)
        got += 1
        sizes.add(len(d))
        if len(d) >= 8 and d == body(int.from_bytes(d[:8], "big"), len(d)):
            intact += 1
    print("received %d intact %d sizes %s" % (got, intact, ",".join(map(str, sorted(sizes)))))


def send(addr, port, n, size, gso):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((addr, port))
    sizes = [size] * (n - 1) + [size // 2]
    if gso:
        s.setsockopt(SOL_UDP, UDP_SEGMENT, size)
    for start in range(0, n, 32):
        burst = [body(j, sizes[j]) for j in range(start, min(start + 32, n))]
        if gso:
            s.send(b"".join(burst))
        else:
            for d in burst:
                s.send(d)
        time.sleep(0.002)  # paced: the test is about whole datagrams, not about loss
    print("sent %d" % n)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["recv", "send"])
    ap.add_argument("addr")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int, nargs="?", default=0)
    ap.add_argument("size", type=int, nargs="?", default=1200)
    ap.add_argument("--gso", action="store_true")
    a = ap.parse_args()
    if a.mode == "recv":
        recv(a.addr, a.port)
    else:
        send(a.addr, a.port, a.n, a.size, a.gso)
