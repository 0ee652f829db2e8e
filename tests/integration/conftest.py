"""The loopback world of the data-path tests: TLS backends <- real Envoy seed gateway <- `apiproxy run`.

Backends run on a loop thread; Envoy and apiproxy are child processes ended by PID, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from lab.backend import EchoServer, KubeAPIStub
from lab.certs import LabCertificates, make_certificates
from lab.gateway import DESTINATION, EnvoyProcess, GatewayConfig, free_port, start_gateway
from lab.loop_thread import LoopThread
from lab.proxy import ApiproxyProcess

KUBE_DESTINATION = "outbound|443||kube-apiserver.shoot--foo--kube.svc.cluster.local"
RESET_DESTINATION = "outbound|443||kube-apiserver.shoot--foo--reset.svc.cluster.local"


@dataclass
class World:
    certs: LabCertificates
    loop: LoopThread
    gateway: EnvoyProcess
    gateway_port: int
    echo_port: int
    kube_port: int
    reset_port: int


async def _start_reset_backend() -> int:
    """Accepts, reads a little, then resets the connection (SO_LINGER 0): a backend that dies mid-tunnel."""
    import asyncio
    import struct

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return int(server.sockets[0].getsockname()[1])


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> LabCertificates:
    return make_certificates(Path(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def world(certs: LabCertificates) -> Iterator[World]:
    with LoopThread() as loop:
        echo_port = loop.run(EchoServer(certs.server_context()).start())
        kube_port = loop.run(KubeAPIStub(certs.server_context()).start())
        reset_port = loop.run(_start_reset_backend())
        config = GatewayConfig(
            clusters={
                DESTINATION: ("127.0.0.1", echo_port),
                KUBE_DESTINATION: ("127.0.0.1", kube_port),
                RESET_DESTINATION: ("127.0.0.1", reset_port),
            },
            legacy_reversed_vpn=True,
        )
        gateway = start_gateway(config)
        try:
            yield World(certs, loop, gateway, config.port, echo_port, kube_port, reset_port)
        finally:
            gateway.stop()


@dataclass
class RunningProxy:
    process: ApiproxyProcess
    port: int

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


class StartProxy(Protocol):
    def __call__(self, *extra: str, destination: str = ..., upstream: str = ...) -> RunningProxy: ...


@pytest.fixture
def start_proxy(world: World) -> Iterator[StartProxy]:
    """Starts `apiproxy run` in front of the world's gateway; every process is ended after the test."""
    started: list[ApiproxyProcess] = []

    def start(*extra: str, destination: str = DESTINATION, upstream: str = "") -> RunningProxy:
        port = free_port()
        args = [
            "run", "--listen", f"127.0.0.1:{port}",
            "--upstream", upstream or f"127.0.0.1:{world.gateway_port}",
            "--destination", destination, "--metrics-address", "off", *extra,
        ]  # fmt: skip
        process = ApiproxyProcess(args)
        started.append(process)
        return RunningProxy(process.start(), port)

    try:
        yield start
    finally:
        for process in started:
            process.cleanup()


# --- scripted CONNECT servers: what no real gateway lets us observe -----------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
SCRIPTED_DESTINATION = "outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local"


@dataclass
class ScriptedProxy:
    """`apiproxy run` in front of a scripted CONNECT server, with its monitoring port on loopback."""

    process: ApiproxyProcess
    port: int
    metrics_port: int

    def connect(self, timeout: float = 10.0, first: bytes = b"") -> socket.socket:
        """A client connection; `first`: bytes it sends at once (apiproxy dials the gateway only after a
        client's first byte, so a test whose server speaks first needs them)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if first:
            sock.sendall(first)
        return sock

    def closed(self, reason: str) -> float:
        """apiproxy_tunnels_closed_total for one reason, from a live scrape."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        pattern = rf'^apiproxy_tunnels_closed_total{{[^}}]*reason="{re.escape(reason)}"[^}}]*}} (\S+)$'
        return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))

    def descriptors(self) -> list[str]:
        """What each open descriptor of the process is (readlink of /proc/PID/fd/*)."""
        fd_dir = f"/proc/{self.process.pid}/fd"
        found = []
        for name in os.listdir(fd_dir):
            with contextlib.suppress(FileNotFoundError):  # closed meanwhile
                found.append(os.readlink(f"{fd_dir}/{name}"))
        return found

    def pipes(self) -> int:
        return sum(1 for target in self.descriptors() if target.startswith("pipe:"))


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    with LoopThread() as thread:
        yield thread


@pytest.fixture
def scripted_proxy(loop_thread: LoopThread) -> Iterator[Callable[..., ScriptedProxy]]:
    """Starts a scripted gateway (`handler` per connection, on a loop thread) and `apiproxy run` in front of
    it; both are ended after the test."""
    processes: list[ApiproxyProcess] = []

    def start(handler: Handler, *extra: str) -> ScriptedProxy:
        async def listen() -> int:
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            return int(server.sockets[0].getsockname()[1])

        gateway_port = loop_thread.run(listen())
        port, metrics_port = free_port(), free_port()
        process = ApiproxyProcess([
            "run", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{gateway_port}",
            "--destination", SCRIPTED_DESTINATION, "--metrics-address", f"127.0.0.1:{metrics_port}", *extra,
        ])  # fmt: skip
        processes.append(process)
        process.start()
        return ScriptedProxy(process, port, metrics_port)

    try:
        yield start
    finally:
        for process in processes:
            process.cleanup()


@pytest.fixture
def serve_through_proxy(scripted_proxy: Callable[..., ScriptedProxy]) -> Callable[..., int]:
    """`scripted_proxy`, for tests that need only the proxy's port."""
    return lambda handler, *extra: scripted_proxy(handler, *extra).port
