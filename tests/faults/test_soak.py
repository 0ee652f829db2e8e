"""The soak (opt-in: -m soak; not in the default CI run): for APIPROXY_SOAK_SECONDS (default 300) the
module's proxy is hit by the faults of the other cases in random order -- gateway faults, resets both
ways, half-closes, bursts of idle tunnels, a client CONNECT as payload -- while a held tunnel and a
background stream keep moving data. At the end it reports and checks leaks: descriptors, tunnels, RSS,
CLOSE_WAIT sockets, and that every injected fault was counted with its reason.
"""

from __future__ import annotations

import collections
import os
import random
import socket
import struct
import time
from collections.abc import Callable

import pytest

from .conftest import Lab
from .lab import (
    OK_200,
    ReadyWatch,
    Stream,
    answer,
    attempt,
    echo_then_reset,
    payload,
    recv_exactly,
    recv_until_closed,
    roundtrip,
    settled,
    silent,
    wait_for,
)
from .test_gateway import SETUP_FAULTS
from .test_many_idle import close_all, open_idle

SECONDS = float(os.environ.get("APIPROXY_SOAK_SECONDS", "300"))


def setup_fault(name: str) -> Callable[[Lab], dict[str, int]]:
    make, reason, _ = SETUP_FAULTS[name]

    def run(lab: Lab) -> dict[str, int]:
        make(lab.fault)
        try:
            attempt(lab.proxy.address)
        finally:
            lab.fault.serve()
        return {reason: 1}

    return run


def upstream_reset(lab: Lab) -> dict[str, int]:
    data = payload(50_000)
    lab.fault.faults.append(answer(OK_200, echo_then_reset(len(data))))
    with socket.create_connection(lab.proxy.address, timeout=10) as sock:
        sock.sendall(data)
        recv_until_closed(sock)
    return {"upstream_reset": 1}


def client_reset(lab: Lab) -> dict[str, int]:
    sock = socket.create_connection(lab.proxy.address, timeout=10)
    sock.sendall(b"x" * 1000)
    assert len(sock.recv(1000)) > 0
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return {"downstream_reset": 1}


def client_leaves_before_answer(lab: Lab) -> dict[str, int]:
    """The client sends its first bytes (the proxy dials on them) and leaves while a silent gateway has not
    answered. The FIN is remembered, to be carried after the held bytes once the gateway answers: the
    tunnel ends at the answer timeout, counted as answer_timeout, and nothing of it is left behind."""
    lab.fault.faults.append(silent)
    sock = socket.create_connection(lab.proxy.address, timeout=10)
    sock.sendall(b"\x16")
    wait_for(lambda: not lab.fault.faults, 5, "the gateway reached")
    sock.close()
    return {"answer_timeout": 1}


def idle_burst(lab: Lab) -> dict[str, int]:
    writers = lab.net.run(open_idle(lab.proxy.address, 300, concurrency=32), timeout=60)
    lab.net.run(close_all(writers))
    return {"completed": 300}


def connect_as_payload(lab: Lab) -> dict[str, int]:
    sent = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
    with socket.create_connection(lab.proxy.address, timeout=10) as sock:
        sock.sendall(sent)
        assert recv_exactly(sock, len(sent)) == sent
    return {"completed": 1}


def plain(lab: Lab) -> dict[str, int]:
    roundtrip(lab.proxy.address, 256 * 1024)
    return {"completed": 1}


SCENARIOS: dict[str, Callable[[Lab], dict[str, int]]] = {
    **{f"gateway_{name}": setup_fault(name) for name in SETUP_FAULTS},
    "upstream_reset": upstream_reset,
    "client_reset": client_reset,
    "client_leaves_before_answer": client_leaves_before_answer,
    "idle_burst": idle_burst,
    "connect_as_payload": connect_as_payload,
    "plain": plain,
}


@pytest.mark.soak
@pytest.mark.envoy
@pytest.mark.timeout(SECONDS + 180)
def test_soak(lab: Lab) -> None:
    proxy = lab.proxy
    rng = random.Random(7)
    before = proxy.closed()
    rss_start, fds_start = proxy.rss_kib(), lab.fds
    expected: collections.Counter[str] = collections.Counter()
    ran: collections.Counter[str] = collections.Counter()
    streamed = 0
    deadline = time.monotonic() + SECONDS
    with ReadyWatch(proxy) as ready:
        while time.monotonic() < deadline:
            stream = Stream(proxy.address, seed=len(ran), max_blocks=64)
            for _ in range(10):
                name = rng.choice(list(SCENARIOS))
                expected.update(SCENARIOS[name](lab))
                ran[name] += 1
                assert not lab.fault.faults, f"{name} left a fault queued"
            lab.held.exchange(64 * 1024)
            streamed += stream.finish()
            expected["completed"] += 1
    time.sleep(1)
    settled(proxy, fds_start, active=1, timeout=20)
    closed = proxy.closed()
    counted = {
        reason: closed[reason] - before[reason] for reason in closed if closed[reason] != before[reason]
    }
    rss_end = proxy.rss_kib()
    print(f"soak {SECONDS:.0f}s: {sum(ran.values())} faults ({dict(ran)}); {streamed >> 20} MiB streamed; "
          f"tunnels closed {counted}; fds {fds_start} -> {proxy.fds()}; RSS {rss_start / 1024:.1f} -> "
          f"{rss_end / 1024:.1f} MiB; slowest /ready {ready.slowest * 1000:.0f} ms; CLOSE_WAIT "
          f"{len(proxy.close_wait())}")  # fmt: skip
    assert counted == dict(expected)
    ready.check()
    assert rss_end - rss_start < 32 * 1024
