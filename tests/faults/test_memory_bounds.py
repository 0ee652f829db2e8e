"""Issue 18, row 4: the gateway streams and the clients never read. Each direction of a tunnel holds at
most --buffer-size plus one read (64 KiB) in apiproxy's memory, a pump whose client stopped reading is
handed back to the event loop with the little its pipe held (so stuck tunnels hold no pipe and no share of
the node's pipe quota), and once a client reads again its bytes arrive in order.

Before the bound, uvloop read 256 KiB at a time into a write buffer limited to 32 KiB and stuck pumps kept
their pipes: 388 KiB per tunnel and the pipe quota gone at ~257 tunnels. The scripted gateway is a fault
peer because the real Envoy gateway would need a backend that streams on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

import pytest

from .conftest import Lab
from .lab import OK_200, FaultGateway, Proxy, answer, recv_exactly, wait_for

TUNNELS = 300
PATTERN = bytes(range(256)) * 256  # 64 KiB; the stream repeats it, so any byte out of order shows


async def stream_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    deadline = asyncio.get_running_loop().time() + 60  # bounded, even if the test never closes
    try:
        while asyncio.get_running_loop().time() < deadline:
            writer.write(PATTERN)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    writer.close()


def pipes(proxy: Proxy) -> int:
    count = 0
    for name in os.listdir(f"/proc/{proxy.pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(f"/proc/{proxy.pid}/fd/{name}").startswith("pipe:")
    return count


@pytest.mark.envoy
def test_clients_that_never_read_cost_a_bounded_amount(lab: Lab) -> None:
    gateway = FaultGateway(lab.net, None).start()
    proxy = Proxy(lab.net, f"127.0.0.1:{gateway.port}")
    proxy.start()
    clients: list[socket.socket] = []
    try:
        pipes_at_start, rss_at_start = pipes(proxy), proxy.rss_kib()
        gateway.faults.extend(answer(OK_200, stream_forever) for _ in range(TUNNELS))
        most_pipes = 0
        for _ in range(TUNNELS):
            client = socket.create_connection(proxy.address, timeout=10)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            client.sendall(b"x")  # its first byte, then it never reads
            clients.append(client)
            most_pipes = max(most_pipes, pipes(proxy))
        wait_for(
            lambda: proxy.active() == TUNNELS,
            30,
            f"{TUNNELS} tunnels open (now {proxy.active()}, closed {dict(proxy.closed())})",
        )
        # Stuck pumps are handed back after two checks a second apart.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pipes(proxy) > pipes_at_start:
            most_pipes = max(most_pipes, pipes(proxy))
            time.sleep(0.2)
        time.sleep(1.0)  # settled: every buffer on the way is full
        rss_stuck = proxy.rss_kib()
        per_tunnel = (rss_stuck - rss_at_start) / TUNNELS
        print(f"{TUNNELS} clients that never read: apiproxy RSS {rss_at_start / 1024:.1f} -> "
              f"{rss_stuck / 1024:.1f} MiB ({per_tunnel:.0f} KiB per tunnel); pipes at most {most_pipes}, "
              f"{pipes(proxy)} once settled")  # fmt: skip
        assert pipes(proxy) == pipes_at_start, "a stuck pump kept its pipe"
        assert most_pipes <= pipes_at_start + 2 * 64, most_pipes  # MAX_PUMPS, two descriptors each
        # Two directions of --buffer-size (32 KiB) plus one 64 KiB read each, with room for allocator slack.
        assert per_tunnel < 160, f"{per_tunnel:.0f} KiB per tunnel"
        for client in clients[:3]:  # reading again: the bytes come in order
            data = recv_exactly(client, 3 * len(PATTERN))
            assert data == PATTERN * 3
        assert proxy.active() == TUNNELS
    finally:
        for client in clients:
            client.close()
        proxy.stop()
        gateway.stop()
