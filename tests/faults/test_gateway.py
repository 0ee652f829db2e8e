"""Case 1: the gateway fails in every way a TCP peer speaking CONNECT can. Each failing tunnel is closed
towards its client with nothing sent, counted with the reason named for the fault, and the proxy goes
on: a tunnel held open across the fault still carries data intact, a new tunnel afterwards works,
/ready answers within 1 s throughout, no descriptor leaks and no socket stays in CLOSE_WAIT.

Envoy makes the faults it can (301 for a destination outside the pattern, 503 for a destination with no
cluster). The others come from `FaultGateway`, a scriptable peer on the gateway's port that relays every
unscripted connection to the real Envoy: Envoy never refuses, blackholes, stays silent, answers 403 or
garbage, sends an endless head, closes mid-head or resets a tunnel on its own.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Callable

import pytest

from lab.gateway import SHOOT_NAMESPACE

from .conftest import Lab
from .lab import (
    OK_200,
    FaultGateway,
    Proxy,
    ReadyWatch,
    Script,
    answer,
    attempt,
    echo_then_reset,
    endless_head,
    expect_closed,
    payload,
    recv_until_closed,
    roundtrip,
    settled,
    silent,
)


def queue(*scripts: Script) -> Callable[[FaultGateway], None]:
    return lambda fault: fault.faults.extend(scripts)


async def close_mid_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 Connection established\r\nX-Half: ")
    await writer.drain()
    writer.close()


# name: (make the fault, reason counted, least time the failure must take)
SETUP_FAULTS: dict[str, tuple[Callable[[FaultGateway], None], str, float]] = {
    "refused": (FaultGateway.refuse, "connect_refused", 0.0),
    "blackholed": (FaultGateway.blackhole, "connect_timeout", 1.0),
    "never_answers": (queue(silent), "answer_timeout", 1.0),
    "answers_403": (queue(answer(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")), "gateway_rejected", 0),
    "answers_301": (queue(answer(b"HTTP/1.1 301 Moved Permanently\r\nlocation: https://x:443/\r\n\r\n")),
                    "gateway_rejected", 0),
    "answers_503": (queue(answer(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")),
                    "gateway_rejected", 0),
    "answers_garbage": (queue(answer(b"\x16\x03\x01\x02\x00garbage that is no HTTP\r\n\r\n")),
                        "malformed_answer", 0),
    "endless_head": (queue(endless_head), "answer_too_large", 0),
    "oversized_header": (queue(answer(b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n")),
                         "answer_too_large", 0),
    "closes_mid_head": (queue(close_mid_head), "closed_before_answer", 0),
}  # fmt: skip


@pytest.mark.envoy
@pytest.mark.parametrize("fault", list(SETUP_FAULTS))
def test_setup_fault(lab: Lab, fault: str) -> None:
    make, reason, least = SETUP_FAULTS[fault]
    proxy = lab.proxy
    before = proxy.closed()
    with ReadyWatch(proxy) as ready:
        make(lab.fault)
        try:
            back, end, took = attempt(proxy.address)
        finally:
            lab.fault.serve()
        lab.held.exchange()
        roundtrip(proxy.address)
    # The client learns of the failure by a plain close: no byte of a refusal reaches it.
    assert (back, end) == (b"", "eof")
    assert least <= took < least + 5
    expect_closed(proxy, before, **{reason: 1, "completed": 1})
    ready.check()
    settled(proxy, lab.fds, active=1)


@pytest.mark.envoy
def test_reset_mid_tunnel(lab: Lab) -> None:
    """The gateway resets an established tunnel: the client gets a reset too (not a clean FIN that would
    pass a truncated response for a whole one)."""
    proxy = lab.proxy
    before = proxy.closed()
    data = payload(100_000)
    lab.fault.faults.append(answer(OK_200, echo_then_reset(len(data))))
    with ReadyWatch(proxy) as ready:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(data)
            back, end = recv_until_closed(sock)
        lab.held.exchange()
        roundtrip(proxy.address)
    # A reset is carried as a reset: what the client had not read yet may be lost with it (the kernel
    # drops unread data on RST), but nothing arrives out of order or altered.
    assert end == "reset" and data.startswith(back), (end, len(back), proxy.closed() - before)
    expect_closed(proxy, before, upstream_reset=1, completed=1)
    ready.check()
    settled(proxy, lab.fds, active=1)


@pytest.mark.envoy
@pytest.mark.parametrize(
    ("destination", "status"),
    [("not-a-shoot.example", 301), (f"{SHOOT_NAMESPACE}x--kube-apiserver-socket", 503)],
    ids=["envoy_301", "envoy_503"],
)
def test_envoy_refuses(lab: Lab, destination: str, status: int) -> None:
    """The real gateway refuses: a destination outside Gardener's pattern is redirected (301), one with no
    cluster gets 503. The tunnel is closed as gateway_rejected and the status is logged."""
    proxy = Proxy(lab.net, f"127.0.0.1:{lab.envoy_port}", destination=destination).start()
    try:
        with ReadyWatch(proxy) as ready:
            back, end, _ = attempt(proxy.address)
        assert (back, end) == (b"", "eof")
        expect_closed(proxy, collections.Counter(), gateway_rejected=1)
        assert f"gateway answered the CONNECT with {status}" in proxy.process.stderr()
        ready.check()
        settled(proxy, proxy.fds())
    finally:
        proxy.stop()
