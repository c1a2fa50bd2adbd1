"""Sends BYTES random bytes through a TCP echo service at HOST:7 and checks they all come
back unchanged (sha256); CHUNK bytes at a time with SLEEP seconds between chunks (a slow,
long stream), or all at once when CHUNK is 0.

    python3 echo_stream.py HOST BYTES [CHUNK SLEEP]
"""
import hashlib
import os
import socket
import sys
import threading
import time

host, total = sys.argv[1], int(sys.argv[2])
chunk = int(sys.argv[3]) if len(sys.argv) > 3 else 0
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
data = os.urandom(total)
s = socket.create_connection((host, 7), timeout=60)


def send():
    if chunk == 0:
        s.sendall(data)
    else:
        for i in range(0, len(data), chunk):
            s.sendall(data[i:i + chunk])
            time.sleep(pause)
    s.shutdown(socket.SHUT_WR)


t = threading.Thread(target=send)
t.start()
got = bytearray()
while True:
    b = s.recv(1 << 16)
    if not b:
        break
    got += b
t.join()
assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), (len(got), len(data))
print("stream ok: %d bytes sha256 match" % len(got))
