"""Bulk directions on splice pumps (apiproxy/splice.py), against scripted CONNECT servers on loopback.

Each test makes a direction bulk for certain: the receiving side holds off reading for a moment, so the
proxy is pushed back, and its next read of the sender is a large one (a read of at least 64 KiB is what
moves a direction onto a pump). The proxy runs with -v, whose log says when a direction goes onto a pump
and when a quiet one comes back to the event loop; a pump holds a pipe, so once every tunnel has ended the
proxy must hold no pipe more than it started with.
Scripted servers, not the Envoy gateway, because the Envoy gateway carries neither half-close nor a reset
at a moment of the test's choosing.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from .conftest import ScriptedProxy

UP_PUMP = "client -> gateway on a splice pump"
DOWN_PUMP = "gateway -> client on a splice pump"
UP_BACK = "client -> gateway back on the event loop"
OK = b"HTTP/1.1 200 Connection established\r\n\r\n"
BLOCK = 1 << 20
MIB = 1 << 20


def blocks(seed: int, count: int) -> Iterator[bytes]:
    generator = random.Random(seed)
    for _ in range(count):
        yield generator.randbytes(BLOCK)


def digest(seed: int, count: int) -> bytes:
    sha = hashlib.sha256()
    for block in blocks(seed, count):
        sha.update(block)
    return sha.digest()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.02)


def recv_exactly(sock: socket.socket, size: int, sha: hashlib._Hash) -> None:
    left = size
    while left:
        chunk = sock.recv(min(left, MIB))
        assert chunk, f"closed with {left} bytes missing"
        sha.update(chunk)
        left -= len(chunk)


def read_to_end(sock: socket.socket) -> None:
    while sock.recv(MIB):
        pass


def test_bulk_both_ways_on_pumps_with_half_close_then_back_to_the_event_loop(
    scripted_proxy: Callable[..., ScriptedProxy],
) -> None:
    """16 MiB each way, each direction on a pump: every byte arrives in order, the client's FIN reaches the
    server only after all its bytes, the server's reply and FIN come back. Between the two bursts the
    quiet direction is handed back to the event loop (its pipe closed), and a small exchange still works."""
    upload, download = 16, 16
    got: dict[str, object] = {}

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await asyncio.sleep(0.5)  # the client fills every buffer on the way meanwhile
        sha, size = hashlib.sha256(), 0
        while size < upload * MIB:
            chunk = await reader.read(MIB)
            assert chunk
            sha.update(chunk)
            size += len(chunk)
        got["upload"] = sha.digest()
        ping = await reader.readexactly(4)  # after the quiet pause: on the event loop again
        writer.write(b"pong:" + ping)
        for block in blocks(2, download):
            writer.write(block)
            await writer.drain()
        got["eof"] = await reader.read(MIB)  # the client's FIN, carried
        writer.write_eof()
        writer.close()

    proxy = scripted_proxy(server, "-v")
    pipes_at_start = proxy.pipes()
    with proxy.connect(timeout=30) as sock:
        for block in blocks(1, upload):
            sock.sendall(block)
        wait_for(lambda: "upload" in got, 30, "the server read the upload")
        assert got["upload"] == digest(1, upload)
        assert UP_PUMP in proxy.process.stderr()
        wait_for(lambda: UP_BACK in proxy.process.stderr(), 10, "the quiet pump released")
        assert proxy.pipes() == pipes_at_start
        sock.sendall(b"ping")
        assert sock.recv(9) == b"pong:ping"
        time.sleep(0.5)  # the server's download fills every buffer on the way meanwhile
        sha = hashlib.sha256()
        recv_exactly(sock, download * MIB, sha)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the server's FIN
    assert sha.digest() == digest(2, download)
    assert got["eof"] == b""
    assert DOWN_PUMP in proxy.process.stderr()
    wait_for(lambda: proxy.closed("completed") == 1, 5, "the tunnel counted as completed")
    assert proxy.pipes() == pipes_at_start


def test_gateway_reset_during_a_pumped_download_is_carried_to_the_client(
    scripted_proxy: Callable[..., ScriptedProxy],
) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        for block in blocks(3, 32):  # more than all buffers on the way hold
            writer.write(block)
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST

    proxy = scripted_proxy(server, "-v")
    pipes_at_start = proxy.pipes()
    with proxy.connect(timeout=30, first=b"download, please") as sock:
        time.sleep(0.5)
        with pytest.raises(ConnectionResetError):
            read_to_end(sock)
    assert DOWN_PUMP in proxy.process.stderr()
    wait_for(lambda: proxy.closed("upstream_reset") == 1, 5, "the tunnel counted as upstream_reset")
    wait_for(lambda: proxy.pipes() == pipes_at_start, 5, "the pump's pipe closed")


def test_client_reset_during_a_pumped_download_is_carried_to_the_gateway(
    scripted_proxy: Callable[..., ScriptedProxy],
) -> None:
    outcome: list[BaseException | None] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        try:
            for block in blocks(4, 256):  # far more than the client will read
                writer.write(block)
                await writer.drain()
            outcome.append(None)
        except ConnectionError as error:
            outcome.append(error)
        writer.close()

    proxy = scripted_proxy(server, "-v")
    pipes_at_start = proxy.pipes()
    with proxy.connect(timeout=30, first=b"download, please") as sock:
        time.sleep(0.5)
        recv_exactly(sock, 32 * MIB, hashlib.sha256())  # more than all buffers on the way hold
        assert DOWN_PUMP in proxy.process.stderr()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Closed with unread data and SO_LINGER 0: an RST.
    wait_for(lambda: bool(outcome), 10, "the server's writes ended")
    assert isinstance(outcome[0], ConnectionResetError), outcome
    wait_for(lambda: proxy.closed("downstream_reset") == 1, 5, "the tunnel counted as downstream_reset")
    wait_for(lambda: proxy.pipes() == pipes_at_start, 5, "the pump's pipe closed")


def test_no_splice_relays_the_same_bulk_through_the_event_loop(
    scripted_proxy: Callable[..., ScriptedProxy],
) -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        for block in blocks(5, 8):  # more than a pump needs to start, were it allowed
            writer.write(block)
            await writer.drain()
        writer.close()

    # The server speaks first and never reads: dial at once, as Envoy does.
    proxy = scripted_proxy(server, "--no-splice", "-v", "--first-byte-timeout", "0s")
    pipes_at_start = proxy.pipes()
    with proxy.connect(timeout=30) as sock:
        time.sleep(0.5)
        sha = hashlib.sha256()
        recv_exactly(sock, 8 * MIB, sha)
        assert proxy.pipes() == pipes_at_start
        assert sock.recv(1) == b""
    assert sha.digest() == digest(5, 8)
    assert "splice pump" not in proxy.process.stderr()
