"""The handover in one process, over real Unix and TCP sockets: the taker accepts on the very socket the giver
listened on (a connection queued before the handover is served after it), a failed or declined exchange
leaves the giver serving, a stale socket file or no process means "bind", the socket file is private and
replaced atomically, and a listener bound elsewhere is declined."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from apiproxy.config import Endpoint, ListenerConfig, TunnelConfig
from apiproxy.handover import giver as giver_module
from apiproxy.handover import wire
from apiproxy.handover.giver import Giver, publish
from apiproxy.handover.taker import request_listener
from apiproxy.server import ProxyServer


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(scenario())  # type: ignore[arg-type]


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "handover")


class Side:
    """A giver's world: a TCP listener on loopback, and what the handover did to it."""

    def __init__(self, path: str) -> None:
        self.listener: socket.socket | None = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.port = self.listener.getsockname()[1]
        self.outcomes: list[tuple[str, str]] = []
        self.taken_by: list[str] = []
        self.giver = Giver(
            path, self.fileno, self.let_go, lambda role, result: self.outcomes.append((role, result))
        )

    def fileno(self) -> int | None:
        return self.listener.fileno() if self.listener is not None else None

    async def let_go(self, successor: str) -> None:
        self.taken_by.append(successor)
        assert self.listener is not None
        self.listener.close()
        self.listener = None


@contextlib.contextmanager
def client_of(port: int) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        yield sock


def test_the_taker_accepts_on_the_same_kernel_socket(path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiproxy")
    taker_outcomes: list[tuple[str, str]] = []

    async def scenario() -> None:
        side = Side(path)
        await side.giver.open()
        # Connected before the handover and never accepted by the giver: it waits in the kernel's queue.
        with client_of(side.port) as early:
            early.sendall(b"queued before")
            inherited = await request_listener(
                path, lambda role, result: taker_outcomes.append((role, result))
            )
            assert inherited is not None
            assert inherited.listener.getsockname() == ("127.0.0.1", side.port)
            assert side.taken_by == []  # nothing changes for the giver before "taken"
            assert await inherited.confirm()
            assert side.taken_by == [f"PID {os.getpid()}"] and side.listener is None
            assert side.giver.given.is_set() and side.giver.successor == f"PID {os.getpid()}"
            inherited.listener.settimeout(5)
            accepted, _ = inherited.listener.accept()
            with accepted:
                assert accepted.recv(64) == b"queued before"
            # And new connections after the giver closed its copy.
            with client_of(side.port) as late:
                accepted, _ = inherited.listener.accept()
                with accepted:
                    late.sendall(b"after")
                    assert accepted.recv(64) == b"after"
            assert inherited.predecessor_running()
            await side.giver.close()
            await asyncio.sleep(0.01)
            assert not inherited.predecessor_running()  # the giver's exit closes the connection
            inherited.listener.close()
            inherited.close()
        assert side.outcomes == [("giver", "given")]

    run(scenario)
    assert taker_outcomes == [("taker", "taken")]
    assert f"handed over the listener to PID {os.getpid()}" in caplog.text
    assert "took over the listener 127.0.0.1:" in caplog.text
    # The giver stopped offering after the handover and left the file alone (a successor replaces it).
    assert os.path.exists(path)


def test_no_process_or_a_stale_socket_file_means_bind(path: str) -> None:
    outcomes: list[tuple[str, str]] = []

    async def scenario() -> None:
        assert await request_listener(path, lambda role, result: outcomes.append((role, result))) is None
        # A crashed process leaves its socket file behind: connecting is refused.
        stale, _ = publish(path)
        stale.close()
        assert os.path.exists(path)
        assert await request_listener(path, lambda role, result: outcomes.append((role, result))) is None

    run(scenario)
    assert outcomes == [("taker", "none"), ("taker", "none")]


def test_a_declined_listener_stays_with_the_giver(path: str) -> None:
    async def scenario() -> None:
        side = Side(path)
        await side.giver.open()
        inherited = await request_listener(path)
        assert inherited is not None
        await inherited.decline("it listens elsewhere")
        await asyncio.sleep(0.05)
        assert side.taken_by == [] and side.listener is not None
        assert side.outcomes == [("giver", "declined")]
        # Still offered: the next taker gets it.
        again = await request_listener(path)
        assert again is not None and await again.confirm()
        assert side.outcomes == [("giver", "declined"), ("giver", "given")]
        again.listener.close()
        again.close()
        await side.giver.close()

    run(scenario)


def test_a_taker_that_breaks_off_or_goes_silent_leaves_the_giver_serving(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(giver_module, "HELLO_TIMEOUT", 0.2)

    async def scenario() -> None:
        side = Side(path)
        await side.giver.open()
        # A taker that takes the offer and vanishes before its verdict (it crashed).
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as vanishing:
            vanishing.connect(path)
            vanishing.send(wire.encode(wire.Hello(1)))
            record, fds, _, _ = await asyncio.to_thread(socket.recv_fds, vanishing, wire.MAX_RECORD, 4)
            assert wire.decode(record, wire.Offer).sockets == ("listener",) and len(fds) == 1
            for fd in fds:
                os.close(fd)
        # One that says nothing at all.
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as silent:
            silent.connect(path)
            await asyncio.sleep(0.4)
        assert side.outcomes == [("giver", "failed"), ("giver", "failed")]
        assert side.taken_by == [] and side.listener is not None
        inherited = await request_listener(path)
        assert inherited is not None and await inherited.confirm()
        inherited.listener.close()
        inherited.close()
        await side.giver.close()

    run(scenario)


def test_a_giver_of_another_protocol_version_means_bind(path: str) -> None:
    outcomes: list[tuple[str, str]] = []

    async def scenario() -> None:
        server, _ = publish(path)
        loop = asyncio.get_running_loop()

        async def answer() -> None:
            connection, _ = await loop.sock_accept(server)
            with connection:
                await loop.sock_recv(connection, wire.MAX_RECORD)
                await loop.sock_sendall(connection, b'{"handover":2,"type":"offer","pid":1,"sockets":[]}')
                await asyncio.sleep(0.2)

        answering = asyncio.ensure_future(answer())
        assert await request_listener(path, lambda role, result: outcomes.append((role, result))) is None
        await answering
        server.close()

    run(scenario)
    assert outcomes == [("taker", "failed")]


def test_the_socket_file_is_private_and_replaced_atomically(path: str) -> None:
    first, first_identity = publish(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert os.listdir(os.path.dirname(path)) == ["handover"]  # no temporary name left behind
    second, second_identity = publish(path)  # a successor's, over the predecessor's
    assert second_identity != first_identity
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        probe.connect(path)
        second.setblocking(True)
        accepted, _ = second.accept()  # the path leads to the second socket now
        accepted.close()
    first.close()
    second.close()


def test_only_the_same_user_may_take_the_listener(caplog: pytest.LogCaptureFixture) -> None:
    python = shutil.which("python3", path="/usr/bin:/bin")  # one the other user may run (not the venv's)
    if os.getuid() != 0 or python is None:
        pytest.skip("needs root (to connect as another user) and /usr/bin/python3")
    with tempfile.TemporaryDirectory(prefix="apiproxy-handover-") as directory:
        os.chmod(directory, 0o755)  # pytest's tmp_path sits under a 0700 directory
        _another_user_asks(python, os.path.join(directory, "handover"), caplog)


def _another_user_asks(python: str, path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiproxy")
    # What a process of another user would do if the socket's mode let it in (a misconfigured hostPath).
    intruder = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        "s.connect(sys.argv[1])\n"
        "s.settimeout(5)\n"
        "try:\n"
        '    s.send(b\'{"handover":1,"type":"hello","pid":1}\')\n'
        "    data, fds, _, _ = socket.recv_fds(s, 4096, 4)\n"
        "    print(len(fds), data)\n"
        "except (ConnectionResetError, BrokenPipeError):\n"
        "    print('reset')\n"
    )

    async def scenario() -> str:
        side = Side(path)
        await side.giver.open()
        os.chmod(path, 0o666)
        result = await asyncio.to_thread(
            subprocess.run, [python, "-c", intruder, path], capture_output=True, text=True, timeout=30,
            user=65534,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert side.taken_by == [] and side.listener is not None
        assert side.outcomes == [("giver", "failed")]
        await side.giver.close()
        return result.stdout

    # No offer, no descriptor: the connection is closed on it (a reset or broken pipe if it still writes).
    assert run(scenario).strip() in ("reset", "0 b''")
    assert "a process of uid 65534 asked for the listener (only root may have it)" in caplog.text


def _server(port: int, host: str = "127.0.0.1") -> ProxyServer:
    return ProxyServer(
        ListenerConfig(Endpoint(host, port)), TunnelConfig(Endpoint("127.0.0.1", 1), "gateway:443")
    )


def test_a_listener_bound_elsewhere_is_declined() -> None:
    async def scenario() -> None:
        with socket.create_server(("127.0.0.1", 0)) as other:
            port = other.getsockname()[1]
            assert await _server(port + 1).adopt(other) == (
                f"it listens on 127.0.0.1:{port}, this process on 127.0.0.1:{port + 1}"
            )
            server = _server(port)
            assert await server.adopt(other) is None
            assert server.address == ("127.0.0.1", port)
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as v6:
            v6.bind(("::1", 0))
            v6.listen()
            assert "not a listening TCP socket of the family of 127.0.0.1" in (
                await _server(1).adopt(v6) or ""
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unlistened:
            unlistened.bind(("127.0.0.1", 0))
            port = unlistened.getsockname()[1]
            assert "not a listening TCP socket" in (await _server(port).adopt(unlistened) or "")

    run(scenario)
