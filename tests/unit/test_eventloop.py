"""The proxy's event loop: uvloop's, with its descriptor-to-transport map keeping nothing (apiproxy.eventloop).

Against the uvloop the project installs: if a release moves or renames the map, these fail, so the saving
(~250 bytes and four Python calls per tunnel) is not lost unnoticed."""

from __future__ import annotations

import asyncio
import gc
import weakref

import uvloop

from apiproxy.eventloop import new_event_loop, untrack_transports


def _transport_map(loop: asyncio.AbstractEventLoop) -> weakref.WeakValueDictionary[int, object]:
    (found,) = [ref for ref in gc.get_referents(loop) if isinstance(ref, weakref.WeakValueDictionary)]
    return found


async def _hold_connections(count: int) -> list[asyncio.BaseTransport]:
    """`count` loopback connections, both ends kept open."""
    loop = asyncio.get_running_loop()
    accepted: list[asyncio.BaseTransport] = []

    class Keep(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

    server = await loop.create_server(Keep, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dialed = [(await loop.create_connection(asyncio.Protocol, "127.0.0.1", port))[0] for _ in range(count)]
    while len(accepted) < count:
        await asyncio.sleep(0.01)
    server.close()
    return dialed + accepted


def _connections_in_map(loop: asyncio.AbstractEventLoop) -> int:
    async def main() -> int:
        transports = await _hold_connections(5)
        held = len(_transport_map(loop))
        for transport in transports:
            transport.close()
        await asyncio.sleep(0)
        return held

    return loop.run_until_complete(main())


def test_uvloop_registers_every_transport() -> None:
    """What the proxy's loop saves: a plain uvloop loop keeps each connection's transport in its map."""
    loop = uvloop.new_event_loop()
    try:
        assert _connections_in_map(loop) == 10
    finally:
        loop.close()


def test_the_proxy_loop_registers_none() -> None:
    loop = new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert _connections_in_map(loop) == 0
        # Lookups miss, as for a descriptor no transport owns: the loop's own check lets it through.
        assert _transport_map(loop).get(0) is None
    finally:
        loop.close()


def test_untrack_transports_changes_a_loop_once() -> None:
    loop = uvloop.new_event_loop()
    try:
        assert untrack_transports(loop)
        assert not untrack_transports(loop)  # nothing left to change: the map is already the empty kind
    finally:
        loop.close()


def test_asyncio_s_own_loop_is_left_alone() -> None:
    """asyncio's own loop keeps a map of that kind too, for the same check: only uvloop's is changed."""
    loop = asyncio.new_event_loop()
    try:
        assert not untrack_transports(loop)
        assert _connections_in_map(loop) == 10
    finally:
        loop.close()
