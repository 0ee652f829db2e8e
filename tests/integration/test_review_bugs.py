"""The bugs an outside review of the tunnel core found (issue 13), each reproduced against a real `apiproxy
run` process in front of scripted gateways on loopback.

Two of them need a moment no real peer produces on demand: a dial attempt abandoned right after the
connection was made, and a dial that returns only after the gateway has spoken. For those, and for an
unexpected exception in the setup, the process is started with a small prelude that wraps one function of
apiproxy (said in each test); everything else is the real code path.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from lab.gateway import free_port
from lab.loop_thread import LoopThread
from lab.proxy import ApiproxyProcess

from .conftest import SCRIPTED_DESTINATION

OK = b"HTTP/1.1 200 Connection established\r\n\r\n"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


async def echo_after_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(OK)
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
def gateways(loop_thread: LoopThread) -> Callable[[Handler], int]:
    def start(handler: Handler) -> int:
        async def listen() -> int:
            server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
            return int(server.sockets[0].getsockname()[1])

        return loop_thread.run(listen())

    return start


@pytest.fixture
def proxies() -> Iterator[Callable[..., tuple[ApiproxyProcess, int, int]]]:
    started: list[ApiproxyProcess] = []

    def start(
        upstream_port: int,
        *extra: str,
        prelude: str = "",
        listen_host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> tuple[ApiproxyProcess, int, int]:
        port, metrics_port = free_port(listen_host), free_port()
        listen = f"[{listen_host}]:{port}" if ":" in listen_host else f"{listen_host}:{port}"
        command = [
            sys.executable,
            "-c",
            "import sys\n" + prelude + "\nfrom apiproxy.cli import main\nmain(sys.argv[1:])",
        ]
        process = ApiproxyProcess(
            [
                "run", "--listen", listen, "--upstream", f"127.0.0.1:{upstream_port}",
                "--destination", SCRIPTED_DESTINATION, "--metrics-address", f"127.0.0.1:{metrics_port}", *extra,
            ],
            command=command,
            env=env,
        )  # fmt: skip
        started.append(process)
        process.start()
        return process, port, metrics_port

    try:
        yield start
    finally:
        for process in started:
            process.cleanup()


def closed_total(metrics_port: int, reason: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    needle = f'reason="{reason}"'
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apiproxy_tunnels_closed_total{") and needle in line
    )


def exchange(port: int, data: bytes, host: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """Send `data`, half-close, read to the end (or the timeout)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# Bug 1. Two gateway addresses; the first dial connects, and its deadline falls before the dial has taken the
# connection (the timeout sweep can run between the two), so the attempt is abandoned. The second address
# must carry the tunnel: the abandoned attempt must not end it. Injected: the deadline falls once, at that
# moment, and the resolver answers with the two scripted gateways.
ABANDON_FIRST_DIAL = """
import os, socket, sys
import apiproxy.upstream as upstream
calls = []
real_connected = upstream.Dial._connected
def deadline_falls_first(self, made):
    calls.append(1)
    if len(calls) == 1:
        self.timed_out = True  # what the dialer's timeout sweep does when the deadline has passed
    return real_connected(self, made)
upstream.Dial._connected = deadline_falls_first
ports = [int(p) for p in os.environ["GATEWAY_PORTS"].split(",")]
def two_addresses(self):
    return [(socket.AF_INET, ("127.0.0.1", port)) for port in ports]
upstream.Resolver.fresh = two_addresses
"""


def test_an_abandoned_dial_attempt_does_not_end_the_tunnel(
    gateways: Callable[[Handler], int], proxies: Callable[..., tuple[ApiproxyProcess, int, int]]
) -> None:
    seen_by_first: list[bytes] = []  # what each connection to the first gateway received, to its end

    async def first_records(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen_by_first.append(await reader.read(-1))
        writer.close()

    first, second = gateways(first_records), gateways(echo_after_ok)
    _, port, metrics_port = proxies(
        first, prelude=ABANDON_FIRST_DIAL, env={"GATEWAY_PORTS": f"{first},{second}"}
    )
    assert exchange(port, b"through the second gateway") == b"through the second gateway"
    assert wait_for(lambda: closed_total(metrics_port, "completed") == 1)
    assert closed_total(metrics_port, "upstream_closed") == 0
    # The first gateway's connection was made and closed unused: not even the CONNECT was sent on it.
    assert wait_for(lambda: seen_by_first == [b""])


# Bug 2. An unexpected exception in the tunnel's setup (a bug) must end the tunnel at once, counted, with a
# traceback in the log, instead of leaving the client paused until the idle timeout. Injected: taking the
# gateway connection raises RuntimeError.
SETUP_BUG = """
import sys
import apiproxy.tunnel as tunnel
def broken(self, *args):
    raise RuntimeError("injected bug in the setup")
tunnel.UpstreamSide.__init__ = broken
"""


def test_a_bug_in_the_setup_ends_the_tunnel_at_once(
    gateways: Callable[[Handler], int], proxies: Callable[..., tuple[ApiproxyProcess, int, int]]
) -> None:
    proxy, port, metrics_port = proxies(gateways(echo_after_ok), prelude=SETUP_BUG)
    started = time.monotonic()
    assert exchange(port, b"hello", timeout=5) == b""
    assert time.monotonic() - started < 4, "the client was left waiting"
    assert wait_for(lambda: closed_total(metrics_port, "internal_error") == 1)
    assert "RuntimeError: injected bug in the setup" in proxy.stderr()


# Bug 4. Log lines name IPv6 peers in brackets.
def test_ipv6_peers_are_logged_in_brackets(
    proxies: Callable[..., tuple[ApiproxyProcess, int, int]],
) -> None:
    refusing = free_port()  # nothing listens there: every tunnel fails with connect_refused
    proxy, port, _ = proxies(refusing, listen_host="::1")
    with socket.create_connection(("::1", port), timeout=5) as sock:
        sock.sendall(b"hello")
        client_port = sock.getsockname()[1]
        sock.recv(1)
    assert wait_for(lambda: "failed (connect_refused)" in proxy.stderr())
    assert f"tunnel from [::1]:{client_port} failed (connect_refused)" in proxy.stderr()


# Bug 5. In the legacy PROXY-v2 mode the gateway may speak first; bytes it sends before the dial has
# returned must reach the client. Injected: the dial takes the connection 0.3 s after it is made (on a
# busy loop that is just later), so the gateway's greeting arrives in between.
SLOW_DIAL_RETURN = """
import asyncio, sys
import apiproxy.upstream as upstream
real_connected = upstream.Dial._connected
def slow_return(self, made):
    asyncio.get_running_loop().call_later(0.3, real_connected, self, made)
upstream.Dial._connected = slow_return
"""


def test_proxy_v2_gateway_bytes_before_the_dial_returns_reach_the_client(
    gateways: Callable[[Handler], int], proxies: Callable[..., tuple[ApiproxyProcess, int, int]]
) -> None:
    async def greeting_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"greeting from the gateway")
        await writer.drain()
        await reader.read(-1)
        writer.close()

    _, port, _ = proxies(gateways(greeting_first), "--upstream-protocol", "proxy-protocol-v2",
                         prelude=SLOW_DIAL_RETURN)  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"hello")
        received = b""
        while len(received) < len(b"greeting from the gateway"):
            chunk = sock.recv(100)
            assert chunk, received
            received += chunk
    assert received == b"greeting from the gateway"
