"""The lab the monitoring tests drive: echo backend <- real Envoy seed gateway <- node proxy <- client.

The echo server runs on an event loop in a thread of its own, so the tests themselves stay synchronous
and can drive child processes (apiproxy, Envoy) with plain sockets.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from lab.gateway import DESTINATION, EnvoyProcess, GatewayConfig, free_port, start_gateway
from lab.loop_thread import EchoThread
from lab.proxy import ApiproxyProcess


@contextmanager
def echo_and_gateway(**gateway: object) -> Iterator[tuple[EchoThread, GatewayConfig, EnvoyProcess]]:
    echo = EchoThread()
    try:
        config = GatewayConfig(clusters={DESTINATION: ("127.0.0.1", echo.port)}, **gateway)  # type: ignore[arg-type]
        envoy = start_gateway(config)
        try:
            yield echo, config, envoy
        finally:
            envoy.stop()
    finally:
        echo.stop()


def proxy_args(listen_port: int, gateway_port: int, metrics_port: int | None, *extra: str) -> list[str]:
    metrics = ["--metrics-address", f"127.0.0.1:{metrics_port}"] if metrics_port is not None else []
    return [
        "run",
        "--listen", f"127.0.0.1:{listen_port}",
        "--upstream", f"127.0.0.1:{gateway_port}",
        "--destination", DESTINATION,
        *metrics,
        *extra,
    ]  # fmt: skip


@contextmanager
def apiproxy(
    gateway_port: int, *extra: str, metrics_address: bool = True
) -> Iterator[tuple[ApiproxyProcess, int, int]]:
    """A running `apiproxy run` in front of the gateway: (process, listen port, metrics port)."""
    listen_port, metrics_port = free_port(), free_port()
    args = proxy_args(listen_port, gateway_port, metrics_port if metrics_address else None, *extra)
    process = ApiproxyProcess(args)
    try:
        process.start()
        yield process, listen_port, metrics_port
    finally:
        process.cleanup()


def echo_tunnel(port: int, payload: bytes, timeout: float = 10) -> bytes:
    """One tunnel: send `payload`, read as many bytes back (or until the proxy closes), close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        received = b""
        try:
            while len(received) < len(payload):
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except ConnectionError:
            pass
        return received


def get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(condition: object, timeout: float = 10, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:g}s")


__all__ = ["DESTINATION", "EchoThread", "apiproxy", "echo_and_gateway", "echo_tunnel", "free_port", "get"]
