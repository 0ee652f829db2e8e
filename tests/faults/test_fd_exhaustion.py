"""Case 6: file-descriptor exhaustion. apiproxy runs with RLIMIT_NOFILE 64 (prlimit; it cannot raise a
hard limit) and 60 clients connect at once, more than it has descriptors for. apiproxy admits only as many
tunnels as it has descriptors for (two each, some kept in reserve) and refuses the rest at accept as
overflow, so every admitted tunnel can reach the gateway: the accept loop neither spins nor dies, CPU time
stays flat, the admitted tunnels work, none is left half set up, /ready still answers within 1 s (its
descriptors are in the reserve), and once clients leave it serves again with its descriptor count back to
the baseline.
"""

from __future__ import annotations

import collections
import contextlib
import re
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
        room = re.search(r"leaves room for (\d+) tunnels", proxy.process.stderr())
        assert room is not None, proxy.process.stderr()
        admitted = int(room.group(1))
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
        full = proxy.fds()
        assert full < LIMIT, f"{full} descriptors: no reserve left"
        cpu_before = proxy.cpu_seconds()
        time.sleep(2.0)
        cpu = proxy.cpu_seconds() - cpu_before
        ready_while_full = probe_ready(proxy)
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
        print(f"fd exhaustion: {admitted} tunnels fit; {dict(outcomes)}; {full} descriptors; CPU {cpu:.2f}s "
              f"in 2s full; /ready meanwhile {ready_while_full:.3f}s")  # fmt: skip
        assert cpu < 0.5, f"{cpu:.2f}s of CPU in 2s while full: the accept loop spins"
        assert outcomes["echo"] == admitted > 10
        assert ready_while_full < 1.0
        assert proxy.metrics()['apiproxy_connections_rejected_total{reason="overflow"}'] > 0

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
