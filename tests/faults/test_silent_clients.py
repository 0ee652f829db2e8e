"""Issue 18, row 3: a pod opens 1,200 connections to VIP:443 and sends nothing. apiproxy dials the gateway
only after a client's first byte, so the silent connections hold no gateway (and no API-server)
connection; one source address holds at most --max-connections-per-source of the slots, so another pod
still gets in; the silent ones are closed at --first-byte-timeout and counted.

Before: all 1,000 slots of `--max-connections 1000` went to the one source, each holding a gateway
connection (and, behind it, an API-server connection) for up to the 1 h idle timeout, and another source
was reset at once.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess

import pytest

from .conftest import Lab
from .lab import FaultGateway, Proxy, roundtrip, wait_for

SILENT = 1200


def gateway_connections(port: int) -> int:
    """Established TCP connections to the gateway's port (ss: one line per connection, headers off)."""
    done = subprocess.run(
        ["ss", "-Htn", "state", "established", f"dport = :{port}"], capture_output=True, text=True, check=True
    )
    return len(done.stdout.splitlines())


@pytest.mark.envoy
def test_silent_clients_hold_no_gateway_connection_and_one_source_not_every_slot(lab: Lab) -> None:
    # In front of the real Envoy gateway through a relaying fault peer, so its connections can be counted.
    relay = FaultGateway(lab.net, ("127.0.0.1", lab.envoy_port)).start()
    proxy = Proxy(lab.net, f"127.0.0.1:{relay.port}", "--max-connections", "1000",
                  "--max-connections-per-source", "500", "--first-byte-timeout", "3s").start()  # fmt: skip
    silent: list[socket.socket] = []
    try:
        for _ in range(SILENT):
            client = socket.socket()
            client.settimeout(5)
            client.bind(("127.0.0.1", 0))
            client.connect(proxy.address)
            silent.append(client)
        wait_for(lambda: proxy.metrics().get('apiproxy_connections_rejected_total{reason="source_limit"}', 0)
                 == SILENT - 500, 10, "the source's connections beyond its cap refused")  # fmt: skip
        assert proxy.active() == 500
        assert gateway_connections(relay.port) == 0
        # Another pod (another source address) is still served.
        other = socket.socket()
        other.bind(("127.0.0.2", 0))
        other.settimeout(10)
        other.connect(proxy.address)
        with other:
            other.sendall(b"hello from another pod")
            assert other.recv(100) == b"hello from another pod"
        # The silent ones are closed at the first-byte deadline, counted by reason.
        wait_for(lambda: proxy.closed()["first_byte_timeout"] == 500, 10, "silent clients closed")
        assert gateway_connections(relay.port) == 0
        print(f"{SILENT} silent connections from one source: 500 admitted (cap), {SILENT - 500} refused as "
              f"source_limit, 0 gateway connections held, all 500 closed as first_byte_timeout")  # fmt: skip
        roundtrip(proxy.address)
    finally:
        for client in silent:
            with contextlib.suppress(OSError):
                client.close()
        proxy.stop()
        relay.stop()
