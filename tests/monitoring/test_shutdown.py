"""Graceful shutdown of `apiproxy run`: SIGTERM turns /ready 503 at once; with no successor to hand the
listener to, new tunnels are still served (nothing steers a node-local VIP's connections elsewhere, issue
15) and the open tunnels go on until they end (or the drain timeout cuts them); the exit status is 0; a
second signal exits at once with 1."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from .lab import apiproxy, echo_and_gateway, echo_tunnel, get, wait_for

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def gateway_port() -> Iterator[int]:
    with echo_and_gateway() as (_, gateway, _):
        yield gateway.port


def _open_tunnel(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"first")
    assert sock.recv(16) == b"first"
    return sock


def _echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_sigterm_drains_open_tunnels_and_exits_0(gateway_port: int) -> None:
    with apiproxy(gateway_port, "--drain-timeout", "20s") as (proxy, listen_port, metrics_port):
        tunnels = [_open_tunnel(listen_port) for _ in range(2)]
        try:
            assert get(metrics_port, "/ready")[0] == 200
            signalled = time.monotonic()
            proxy.signal(signal.SIGTERM)
            wait_for(lambda: get(metrics_port, "/ready")[0] == 503, timeout=2, interval=0.01)
            not_ready_after = time.monotonic() - signalled
            assert get(metrics_port, "/ready") == (503, "not ready: draining\n")
            # A pod connecting now is still served: there is nowhere else for it to go.
            assert echo_tunnel(listen_port, b"late", timeout=5) == b"late"
            # The open tunnels still carry data while the process drains.
            time.sleep(0.5)
            assert proxy.process is not None and proxy.process.poll() is None
            for sock in tunnels:
                assert _echo(sock, b"still here" * 1000) == b"still here" * 1000
        finally:
            for sock in tunnels:
                sock.close()
        # Once they end, the process exits 0 without waiting for the drain timeout.
        assert proxy.wait(10) == 0
        assert time.monotonic() - signalled < 10
        assert not_ready_after < 1.0
        assert "draining 2 open tunnels" in proxy.stderr()
        # Every tunnel was logged as completed, with every byte.
        lines = sorted(
            line.split("] ", 1)[1].split("ms ")[0] for line in proxy.stdout().splitlines() if "rx" in line
        )
        assert [line.rsplit(" ", 1)[0] for line in lines] == [
            "200 - 10005 rx 10005 tx",
            "200 - 10005 rx 10005 tx",
            "200 - 4 rx 4 tx",
        ], lines


def test_drain_timeout_cuts_the_rest_and_exits_0(gateway_port: int) -> None:
    with apiproxy(gateway_port, "--drain-timeout", "1s") as (proxy, listen_port, _):
        sock = _open_tunnel(listen_port)
        try:
            signalled = time.monotonic()
            proxy.signal(signal.SIGTERM)
            assert proxy.wait(10) == 0
            took = time.monotonic() - signalled
            assert 0.9 <= took < 5, took
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(16) == b""  # cut
        finally:
            sock.close()
        assert "closed 1 tunnels still open at the end of the drain" in proxy.stderr()
        assert " 200 - 5 rx 5 tx " in proxy.stdout()  # the cut tunnel is logged too


def test_second_signal_exits_1_at_once(gateway_port: int) -> None:
    with apiproxy(gateway_port, "--drain-timeout", "30s") as (proxy, listen_port, _):
        sock = _open_tunnel(listen_port)
        try:
            proxy.signal(signal.SIGTERM)
            wait_for(lambda: "draining 1 open tunnels" in proxy.stderr(), timeout=5)
            proxy.signal(signal.SIGINT)
            started = time.monotonic()
            assert proxy.wait(5) == 1
            assert time.monotonic() - started < 2
        finally:
            sock.close()


def test_sigterm_without_tunnels_exits_0_quickly(gateway_port: int) -> None:
    with apiproxy(gateway_port) as (proxy, _, _):
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert proxy.wait(10) == 0
        assert time.monotonic() - started < 3
