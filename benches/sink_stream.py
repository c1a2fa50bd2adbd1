"""Single-stream TCP throughput to a discard service (HOST port 9, which answers the byte
count after the client half-closes): sends for SECONDS, prints "Gb/s bytes".

    python3 sink_stream.py HOST SECONDS
"""
import socket
import sys
import time

host, secs = sys.argv[1], float(sys.argv[2])
buf = b"\0" * (256 * 1024)
s = socket.create_connection((host, 9), timeout=30)
start = time.monotonic()
sent = 0
while time.monotonic() - start < secs:
    s.sendall(buf)
    sent += len(buf)
s.shutdown(socket.SHUT_WR)
got = int(s.makefile().readline())
elapsed = time.monotonic() - start
assert got == sent, f"the sink counted {got} bytes, {sent} were sent"
print("%.2f %d" % (sent * 8 / elapsed / 1e9, sent))
