"""Case 6: file-descriptor exhaustion. apiproxy runs with RLIMIT_NOFILE 64 (prlimit; it cannot raise a
hard limit) and 60 clients connect at once, more than it has descriptors for. The accept loop neither spins
nor dies: CPU time stays flat while saturated, the excess connections are closed, tunnels that were set up
keep working, none is left half set up, and once clients leave it serves again with its descriptor count
back to the baseline.

While saturated the monitoring port cannot accept either (it needs a descriptor too), so /ready is only
required to answer within 1 s before and after; how it fared meanwhile is printed.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import time

import pytest

from .conftest import Lab
from .lab import Proxy, http_get, roundtrip, settled

LIMIT = 64
CLIENTS = 60


def probe_ready(proxy: Proxy) -> float:
    started = time.monotonic()
    status, _ = http_get("127.0.0.1", proxy.metrics_port, "/ready", 1.0)
    assert status == 200
    return time.monotonic() - started


@pytest.mark.envoy
def test_fd_exhaustion(lab: Lab) -> None:
    proxy = Proxy(
        lab.net, f"127.0.0.1:{lab.envoy_port}", command_prefix=["prlimit", f"--nofile={LIMIT}:{LIMIT}"]
    )
    proxy.start()
    clients: list[socket.socket] = []
    try:
        assert f"file descriptor limit: {LIMIT}" in proxy.process.stderr()
        roundtrip(proxy.address)
        baseline = proxy.fds()
        probe_ready(proxy)
        for _ in range(CLIENTS):  # all at once: the accept queue holds more than there are descriptors
            client = socket.socket()
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(proxy.address)
            clients.append(client)
        time.sleep(0.5)
        for client in clients:
            client.settimeout(3)
            with contextlib.suppress(OSError):
                client.sendall(b"ping")
        time.sleep(1.0)
        assert proxy.fds() >= LIMIT - 2, f"not saturated: {proxy.fds()} descriptors"
        cpu_before = proxy.cpu_seconds()
        time.sleep(2.0)
        cpu = proxy.cpu_seconds() - cpu_before
        try:
            ready_while_saturated = f"{probe_ready(proxy):.3f}s"
        except OSError as error:
            ready_while_saturated = type(error).__name__
        assert proxy.process.process is not None and proxy.process.process.poll() is None, "apiproxy died"

        outcomes: collections.Counter[str] = collections.Counter()
        working = []
        for client in clients:
            client.settimeout(0.3)
            try:
                answer = client.recv(4)
            except TimeoutError:
                outcomes["waiting"] += 1  # still in the kernel's accept queue
                continue
            except OSError:
                outcomes["closed"] += 1
                continue
            if answer == b"ping":
                outcomes["echo"] += 1
                working.append(client)
            else:
                outcomes["closed"] += 1
        for client in working:  # the tunnels that were set up still carry data
            client.settimeout(5)
            client.sendall(b"again")
            assert client.recv(5) == b"again"
        print(f"fd exhaustion: {dict(outcomes)}; CPU {cpu:.2f}s in 2s saturated; /ready meanwhile: "
              f"{ready_while_saturated}")  # fmt: skip
        assert cpu < 0.5, f"{cpu:.2f}s of CPU in 2s while saturated: the accept loop spins"
        assert outcomes["echo"] > 10

        for client in clients:
            client.close()
        clients.clear()
        time.sleep(0.5)
        roundtrip(proxy.address)
        assert probe_ready(proxy) < 1.0
        settled(proxy, baseline)
        closed = proxy.closed()
        assert set(closed) <= {"completed", "connect_error", "downstream_closed_early"}, closed
        opened = proxy.metrics()["apiproxy_tunnels_opened_total"]
        assert sum(closed.values()) == opened
    finally:
        for client in clients:
            client.close()
        proxy.stop()
