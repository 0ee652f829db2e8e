"""The dial (upstream.Dial) against real listening sockets on loopback, under uvloop as deployed and under
asyncio's own loop (the probe's): which address carries, what each failure is called, the coarse timeout,
cancelling, and an attempt abandoned after its connection was made. A silent address is a real listener
whose accept queue is full: the kernel drops the SYN, so the connect hangs until the timeout.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from apiproxy.config import Endpoint, TunnelConfig
from apiproxy.reasons import Reason
from apiproxy.upstream import Address, Connecting, Dial, Dialer, UpstreamError
from lab.gateway import free_port


class FixedAddresses:
    """A resolver whose name resolves to `addresses`, always fresh."""

    def __init__(self, addresses: list[Address]) -> None:
        self.addresses = addresses

    def fresh(self) -> list[Address]:
        return self.addresses

    async def resolve(self) -> list[Address]:
        return self.addresses


class Outcome:
    """A DialReceiver that keeps what it hears, once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.heard: asyncio.Future[tuple[str, Any]] = loop.create_future()

    def gateway_reached(self, connection: Connecting, address: Address) -> None:
        assert not self.heard.done(), "told twice"
        self.heard.set_result(("reached", (connection, address)))

    def gateway_unreached(self, error: BaseException | None) -> None:
        assert not self.heard.done(), "told twice"
        self.heard.set_result(("unreached", error))


def v4(port: int) -> Address:
    return (socket.AF_INET, ("127.0.0.1", port))


@pytest.fixture
def listening() -> Iterator[Callable[..., int]]:
    """Listening sockets that accept nothing themselves (the kernel completes the handshake). `full=True`:
    backlog 0 with one connection waiting, so the accept queue is full and new SYNs are dropped."""
    sockets: list[socket.socket] = []

    def listen(full: bool = False) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(0 if full else 16)
        sockets.append(sock)
        port = int(sock.getsockname()[1])
        if full:
            sockets.append(socket.create_connection(("127.0.0.1", port)))
        return port

    yield listen
    for sock in sockets:
        sock.close()


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Any], Any]]:
    loop = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    yield lambda coro: loop.run_until_complete(asyncio.wait_for(coro, 10))
    loop.close()


def dialer_for(addresses: list[Address], connect_timeout: float = 5.0) -> Dialer:
    config = TunnelConfig(upstream=Endpoint("gateway.example", 8443), connect_timeout=connect_timeout)
    return Dialer(config, FixedAddresses(addresses))  # type: ignore[arg-type]


async def dial(dialer: Dialer) -> tuple[str, Any]:
    outcome = Outcome(asyncio.get_running_loop())
    dialer.dial(outcome).start()
    return await outcome.heard


def close(result: tuple[str, Any]) -> None:
    if result[0] == "reached":
        result[1][0].transport.close()


def test_the_first_address_that_connects_carries_and_is_tried_first_next_time(
    run: Callable[[Any], Any], listening: Callable[..., int]
) -> None:
    refused, live = free_port(), listening()
    dialer = dialer_for([v4(refused), v4(live)])

    async def scenario() -> None:
        what, (connection, address) = first = await dial(dialer)
        assert what == "reached" and address == v4(live)
        assert isinstance(connection, Connecting) and connection.transport is not None
        close(first)
        assert dialer.preferred == v4(live)

    run(scenario())


def test_every_address_refused_is_one_error_naming_each(run: Callable[[Any], Any]) -> None:
    one, two = free_port(), free_port()

    async def scenario() -> None:
        what, error = await dial(dialer_for([v4(one)]))
        assert what == "unreached" and isinstance(error, UpstreamError)
        assert error.reason is Reason.CONNECT_REFUSED
        assert str(error) == f"gateway 127.0.0.1:{one} refused the connection"
        what, error = await dial(dialer_for([v4(one), v4(two)]))
        assert isinstance(error, UpstreamError) and error.reason is Reason.CONNECT_REFUSED
        assert str(error) == (
            f"gateway 127.0.0.1:{one} refused the connection; gateway 127.0.0.1:{two} refused the connection"
        )

    run(scenario())


def test_a_silent_address_times_out_and_the_next_carries(
    run: Callable[[Any], Any], listening: Callable[..., int]
) -> None:
    hanging, live = listening(full=True), listening()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        what, error = await dial(dialer_for([v4(hanging)], connect_timeout=0.3))
        assert what == "unreached" and isinstance(error, UpstreamError)
        assert error.reason is Reason.CONNECT_TIMEOUT
        assert str(error) == f"connecting to gateway 127.0.0.1:{hanging} timed out after 0.3s"
        assert loop.time() - started >= 0.3  # never early (up to one sweep late)
        result = await dial(dialer_for([v4(hanging), v4(live)], connect_timeout=0.3))
        assert result[0] == "reached" and result[1][1] == v4(live)
        close(result)

    run(scenario())


def test_a_cancelled_dial_reports_once_it_has_unwound(
    run: Callable[[Any], Any], listening: Callable[..., int]
) -> None:
    hanging = listening(full=True)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        outcome = Outcome(loop)
        dialer = dialer_for([v4(hanging)])
        ongoing = dialer.dial(outcome)
        ongoing.start()
        await asyncio.sleep(0.05)
        assert not outcome.heard.done()
        ongoing.cancel()
        assert await outcome.heard == ("unreached", None)
        ongoing.cancel()  # again, and after the report: nothing more happens
        await asyncio.sleep(0.05)

    run(scenario())


def test_an_attempt_given_up_after_its_connection_was_made_closes_it_and_the_next_carries(
    run: Callable[[Any], Any],
) -> None:
    """The deadline (or the tunnel's end) can fall between the connection being made and the dial taking
    it. That connection is closed and never reported; the next address carries."""

    async def scenario() -> None:
        accepted: list[tuple[int, asyncio.StreamReader]] = []

        async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append((writer.get_extra_info("sockname")[1], reader))

        first = await asyncio.start_server(keep, "127.0.0.1", 0)
        second = await asyncio.start_server(keep, "127.0.0.1", 0)
        ports = [int(server.sockets[0].getsockname()[1]) for server in (first, second)]
        dialer = dialer_for([v4(port) for port in ports])
        outcome = Outcome(asyncio.get_running_loop())
        ongoing: list[Dial] = []
        made: list[Connecting] = []

        class GivenUpOnce(Connecting):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                made.append(self)
                if len(made) == 1:
                    ongoing[0].expire()  # as the timeout sweep would, right now

        dialer.new_connection = lambda: GivenUpOnce(dialer.read_view)  # type: ignore[method-assign]
        ongoing.append(dialer.dial(outcome))
        ongoing[0].start()
        what, (connection, address) = await outcome.heard
        assert what == "reached" and address == v4(ports[1]) and connection is made[1]
        assert made[0].receiver is None  # never handed to a protocol
        while len(accepted) < 2:
            await asyncio.sleep(0.01)
        by_port = dict(accepted)
        assert await by_port[ports[0]].read() == b""  # closed, nothing sent
        connection.transport.close()  # type: ignore[union-attr]
        for server in (first, second):
            server.close()

    run(scenario())
