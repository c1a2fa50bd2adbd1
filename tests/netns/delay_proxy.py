"""A TCP proxy that delays what the server sends: the stand-in for `tc netem delay` on the
server's link where the kernel has no netem (benches/rtt.sh).

    python3 delay_proxy.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT DELAY_MS

Every byte from the upstream (the server) reaches the client DELAY_MS after it arrived, in
order; bytes towards the server pass at once. As with netem on the server's egress, a
message relayed through the server (client -> server -> other client) pays the delay once
per hop out of the server. Nagle is off on both sides so writes are not held back.
"""

import asyncio
import socket
import sys
import time


async def pump(reader, writer, delay):
    queue: asyncio.Queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(1 << 16):
            queue.put_nowait((time.monotonic() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((0, None))
    try:
        await sender
    except ConnectionError:
        pass


def nodelay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def main():
    listen_port, host, port, delay_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    delay = float(delay_ms) / 1000

    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection(host, port)
        except OSError:
            client_w.close()
            return
        nodelay(client_w)
        nodelay(server_w)
        await asyncio.gather(pump(client_r, server_w, 0), pump(server_r, client_w, delay))

    server = await asyncio.start_server(handle, "0.0.0.0", int(listen_port))
    print("delay proxy ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
