"""Case 3: half-close carried both ways, resets carried as resets, and the idle timeout of a half-closed
tunnel. Half-close needs a gateway that carries it: Envoy 1.40 as the gateway ends the whole HTTP/1.1
CONNECT stream on a downstream FIN (the echo behind it is cut, 0 bytes come back; checked by hand with a
raw CONNECT to the lab Envoy), so the far end here is `FaultGateway` answering 200 itself and playing the
API server. The module's held tunnel still goes through the real Envoy.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import time

import pytest

from .conftest import Lab
from .lab import (
    OK_200,
    Held,
    Proxy,
    ReadyWatch,
    answer,
    digest,
    expect_closed,
    payload,
    recv_until_closed,
    settled,
)

RESPONSE = payload(300_000, seed=1)


async def _read_to_end(reader: asyncio.StreamReader) -> tuple[bytes, str]:
    chunks = []
    try:
        while data := await reader.read(65536):
            chunks.append(data)
    except ConnectionResetError:
        return b"".join(chunks), "reset"
    return b"".join(chunks), "eof"


@pytest.mark.envoy
def test_client_half_close_then_response(lab: Lab) -> None:
    """The client sends its request and FIN; the far end sees the whole request and the FIN, then answers,
    and the whole answer reaches the client before the tunnel ends as completed."""
    seen: list[tuple[bytes, str]] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_to_end(reader))
        writer.write(RESPONSE)
        await writer.drain()

    request = payload(200_000, seed=2)
    before = lab.proxy.closed()
    lab.fault.faults.append(answer(OK_200, server))
    with ReadyWatch(lab.proxy) as ready:
        with socket.create_connection(lab.proxy.address, timeout=10) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            back, end = recv_until_closed(sock)
        lab.held.exchange()
    assert [(digest(b), e) for b, e in seen] == [(digest(request), "eof")]
    assert (digest(back), end) == (digest(RESPONSE), "eof")
    expect_closed(lab.proxy, before, completed=1)
    ready.check()
    settled(lab.proxy, lab.fds, active=1)


@pytest.mark.envoy
def test_upstream_half_close_then_client_data(lab: Lab) -> None:
    """The far end sends its part and FIN first; the client still sends afterwards and every byte arrives."""
    seen: list[tuple[bytes, str]] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(RESPONSE)
        writer.write_eof()
        await writer.drain()
        seen.append(await _read_to_end(reader))

    late = payload(500_000, seed=3)
    before = lab.proxy.closed()
    lab.fault.faults.append(answer(OK_200, server))
    with ReadyWatch(lab.proxy) as ready:
        with socket.create_connection(lab.proxy.address, timeout=10) as sock:
            sock.sendall(b"hello")  # the gateway is dialled at the client's first byte
            back, end = recv_until_closed(sock)
            sock.sendall(late)  # after the gateway's FIN reached us
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""
        lab.held.exchange()
    assert (digest(back), end) == (digest(RESPONSE), "eof")
    assert [(digest(b), e) for b, e in seen] == [(digest(b"hello" + late), "eof")]
    expect_closed(lab.proxy, before, completed=1)
    ready.check()
    settled(lab.proxy, lab.fds, active=1)


@pytest.mark.envoy
def test_client_reset(lab: Lab) -> None:
    """The client resets mid-tunnel: the far end gets a reset too, the tunnel counts as downstream_reset."""
    seen: list[tuple[bytes, str]] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_to_end(reader))

    before = lab.proxy.closed()
    lab.fault.faults.append(answer(OK_200, server))
    with ReadyWatch(lab.proxy) as ready:
        sock = socket.create_connection(lab.proxy.address, timeout=10)
        sock.sendall(b"x" * 1000)
        time.sleep(0.3)  # the bytes reach the far end before the reset does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        lab.held.exchange()
    assert [(len(b), e) for b, e in seen] == [(1000, "reset")]
    expect_closed(lab.proxy, before, downstream_reset=1)
    ready.check()
    settled(lab.proxy, lab.fds, active=1)


async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the client's bytes and FIN, then neither answers nor closes (bounded: 30 s)."""
    await _read_to_end(reader)
    await asyncio.sleep(30)


@pytest.mark.envoy
def test_idle_timeout_of_half_closed_tunnel(lab: Lab) -> None:
    """A tunnel half-closed by the client whose far end never answers is closed by the idle timeout
    (1 s here); a tunnel moving data on the same proxy meanwhile is not."""
    proxy = Proxy(lab.net, f"127.0.0.1:{lab.fault.port}", "--idle-timeout", "1s").start()
    try:
        fds = proxy.fds()
        with ReadyWatch(proxy) as ready:
            busy = Held(proxy.address)
            lab.fault.faults.append(answer(OK_200, hold))
            with socket.create_connection(proxy.address, timeout=10) as quiet:
                quiet.sendall(b"request")
                quiet.shutdown(socket.SHUT_WR)
                started = time.monotonic()
                quiet.settimeout(0.25)
                end = "timeout"
                while end == "timeout" and time.monotonic() - started < 5:
                    busy.exchange(4096)  # keeps the other tunnel moving while the quiet one idles
                    _, end = recv_until_closed(quiet)
                took = time.monotonic() - started
            busy.exchange()
            busy.close()
        assert end in ("eof", "reset") and 0.9 <= took <= 3.0, (end, took)
        expect_closed(proxy, collections.Counter(), idle_timeout=1, completed=1)
        ready.check()
        settled(proxy, fds)
    finally:
        proxy.stop()
