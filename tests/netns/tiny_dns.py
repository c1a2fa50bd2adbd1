#!/usr/bin/env python3
"""A tiny DNS server for tests: answers every A query with ADDR (TTL 5), everything else
with an empty NOERROR. usage: tiny_dns.py LISTEN_IP PORT ADDR"""
import socket
import struct
import sys

ip, port, addr = sys.argv[1], int(sys.argv[2]), socket.inet_aton(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((ip, port))
while True:
    q, peer = s.recvfrom(512)
    if len(q) < 12:
        continue
    # The question: the name's labels, then QTYPE and QCLASS.
    i = 12
    while i < len(q) and q[i] != 0:
        i += q[i] + 1
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
    question = q[12:i + 5]
    answers = b""
    if qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + addr
    flags = 0x8180  # response, recursion desired + available, NOERROR
    header = q[:2] + struct.pack("!HHHHH", flags, 1, 1 if answers else 0, 0, 0)
    s.sendto(header + question + answers, peer)
