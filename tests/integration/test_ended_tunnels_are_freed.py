"""An ended tunnel is freed by reference counting, at once: it leaves no cycle for the garbage collector.

Each uvloop transport keeps its protocol, so a tunnel, its gateway side and their two connections form a
cycle unless the tunnel lets go of them when it ends. Cyclic garbage waits for a collection of the
generation it has reached, and idle tunnels reach the oldest: RSS grew by 2-4 MiB a round when 2,000 idle
tunnels were opened and closed round after round (tests/faults/test_many_idle.py). Here the proxy runs in
this process (uvloop, as deployed) in front of a scripted CONNECT gateway on loopback; the collector is off
while tunnels come and go, then one collection that saves what it finds shows what only it could free.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterator

import pytest

from apiproxy.config import Endpoint, ListenerConfig, TunnelConfig
from apiproxy.eventloop import new_event_loop
from apiproxy.server import ProxyServer
from lab.gateway import free_port

OK = b"HTTP/1.1 200 Connection established\r\n\r\n"
FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"
TUNNELS = 50


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(OK)
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()


async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(FORBIDDEN)
    writer.close()


async def through(port: int, payload: bytes = b"ping") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        writer.write_eof()
        return await reader.read()
    except ConnectionResetError:
        return b"reset"
    finally:
        writer.close()


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def cyclic_garbage() -> dict[str, int]:
    """What only the garbage collector could free, by type name, among the proxy's objects."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    ours = ("Tunnel", "UpstreamSide", "Connecting", "Dial", "BoundedReads")
    found: dict[str, int] = {}
    for thing in gc.garbage:
        name = type(thing).__name__
        # The test's own clients are uvloop transports too (asyncio streams leave cycles when reset).
        if name in ours or (name == "TCPTransport" and type(thing.get_protocol()).__name__ in ours):
            found[name] = found.get(name, 0) + 1
    return found


async def scenario(gateway: Callable[..., Awaitable[None]] | None, max_connections: int = 100) -> list[bytes]:
    if gateway is None:
        gateway_port, server = free_port(), None  # nothing listens there: refused
    else:
        server = await asyncio.start_server(gateway, "127.0.0.1", 0)
        gateway_port = int(server.sockets[0].getsockname()[1])
    config = TunnelConfig(
        upstream=Endpoint("127.0.0.1", gateway_port),
        connect_authority="kube-apiserver:443",
        connect_headers=(("X-Gardener-Destination", "outbound|443||kube-apiserver.shoot.svc.cluster.local"),),
    )
    proxy = ProxyServer(ListenerConfig(Endpoint("127.0.0.1", 0), max_connections=max_connections), config)
    await proxy.start()
    assert proxy.address is not None
    port = int(proxy.address[1])
    try:
        answers = list(await asyncio.gather(*(through(port) for _ in range(TUNNELS))))
        for _ in range(100):  # the last ends are seen a few loop iterations after the clients read EOF
            if not proxy.tunnels:
                break
            await asyncio.sleep(0.01)
        assert not proxy.tunnels
        return answers
    finally:
        await proxy.drain(0)
        if server is not None:
            server.close()


@pytest.mark.usefixtures("collector_off")
@pytest.mark.parametrize(
    ("case", "gateway", "max_connections", "expected"),
    [
        ("completed", echo, 100, b"ping"),
        ("refused by the gateway", refuse, 100, b""),
        ("no gateway listening", None, 100, b""),
        ("over the connection limit", echo, 10, None),
    ],
)
def test_ended_tunnels_leave_no_cycle(
    case: str, gateway: Callable[..., Awaitable[None]] | None, max_connections: int, expected: bytes | None
) -> None:
    loop = new_event_loop()  # the loop `apiproxy run` serves on
    try:
        answers = loop.run_until_complete(asyncio.wait_for(scenario(gateway, max_connections), 30))
    finally:
        loop.close()
    if expected is not None:
        assert answers == [expected] * TUNNELS, case
    else:
        assert b"ping" in answers and b"reset" in answers, "some carried, some refused"
    assert cyclic_garbage() == {}, case
