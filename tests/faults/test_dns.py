"""Case 2: DNS. apiproxy runs in a network namespace of the test's own, where the gateway name `gw.test`
comes from the namespace's hosts file, rewritten in place while it runs (--dns-refresh 200ms). The real
Envoy gateway runs in the namespace too; `FaultGateway` relays on 127.0.0.2, .3 and .4 (same port) stand
for the addresses the name can point at -- Envoy listens on one address only, and the relays count which
address each tunnel went to, or stay dead (a full accept queue: connects time out).
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lab.gateway import DESTINATION, GatewayConfig, free_port, start_gateway

from .lab import (
    Echo,
    FaultGateway,
    Held,
    Net,
    Proxy,
    ReadyWatch,
    attempt,
    expect_closed,
    network_namespace,
    roundtrip,
    settled,
    write_hosts,
)

pytestmark = [pytest.mark.envoy, pytest.mark.netns]
NAME = "gw.test"


@dataclass
class DNSLab:
    netns: str
    net: Net
    relays: dict[str, FaultGateway]  # by address
    port: int
    proxy: Proxy
    fds: int


@pytest.fixture(scope="module")
def dns_lab() -> Iterator[DNSLab]:
    with network_namespace() as netns:
        net = Net(netns)
        parts: list[Any] = []
        try:
            echo = Echo(net)
            parts.append(echo)
            config = GatewayConfig(clusters={DESTINATION: ("127.0.0.1", echo.port)})
            envoy = start_gateway(config, command_prefix=net.prefix())
            parts.append(envoy)
            port = free_port()
            relays = {}
            for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
                relays[address] = FaultGateway(
                    net, ("127.0.0.1", config.port), host=address, port=port
                ).start()
                parts.append(relays[address])
            args = ("--dns-refresh", "200ms", "--connect-timeout", "500ms", "--dns-family", "v4")
            proxy = Proxy(net, f"{NAME}:{port}", *args).start()  # the name does not resolve yet
            parts.append(proxy)
            yield DNSLab(netns, net, relays, port, proxy, proxy.fds())
        finally:
            for part in reversed(parts):
                part.stop()
            net.close()


def counts(lab: DNSLab) -> dict[str, int]:
    return {address: relay.connections for address, relay in lab.relays.items()}


def gateway_order(lab: DNSLab) -> list[str]:
    """The addresses in the order apiproxy's getaddrinfo call gets them (no AI_ADDRCONFIG, unlike getent)."""
    code = f"import socket; print(*[i[4][0] for i in socket.getaddrinfo('{NAME}', 1, socket.AF_INET, socket.SOCK_STREAM)])"
    done = subprocess.run(
        [*lab.net.prefix(), sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def resolve(lab: DNSLab, hosts: str) -> None:
    write_hosts(lab.netns, hosts)
    time.sleep(0.5)  # more than --dns-refresh: the next tunnel re-resolves


def test_name_fails_then_resolves(dns_lab: DNSLab) -> None:
    """No address for the name: the tunnel is closed and counted as dns_failure. Once the name resolves,
    tunnels work; when it fails again later, the last good addresses are kept."""
    lab = dns_lab
    with ReadyWatch(lab.proxy) as ready:
        back, end, _ = lab.net.call(attempt, lab.proxy.address)
        assert (back, end) == (b"", "eof")
        resolve(lab, f"127.0.0.2 {NAME}\n")
        lab.net.call(roundtrip, lab.proxy.address)
        resolve(lab, "")
        lab.net.call(roundtrip, lab.proxy.address)
    assert counts(lab) == {"127.0.0.2": 2, "127.0.0.3": 0, "127.0.0.4": 0}
    expect_closed(lab.proxy, collections.Counter(), dns_failure=1, completed=2)
    ready.check()
    settled(lab.proxy, lab.fds)


def test_name_moves(dns_lab: DNSLab) -> None:
    """The name moves to another address while a tunnel is open: the open tunnel keeps working on the old
    address, new tunnels go to the new one."""
    lab = dns_lab
    resolve(lab, f"127.0.0.2 {NAME}\n")
    before, closed = counts(lab), lab.proxy.closed()
    with ReadyWatch(lab.proxy) as ready:
        old = lab.net.call(Held, lab.proxy.address)
        resolve(lab, f"127.0.0.3 {NAME}\n")
        lab.net.call(roundtrip, lab.proxy.address)
        lab.net.call(old.exchange)
        lab.net.call(old.close)
    now = counts(lab)
    assert (now["127.0.0.2"] - before["127.0.0.2"], now["127.0.0.3"] - before["127.0.0.3"]) == (1, 1)
    expect_closed(lab.proxy, closed, completed=2)
    ready.check()
    settled(lab.proxy, lab.fds)


def test_first_address_dead(dns_lab: DNSLab) -> None:
    """The name lists two addresses and the first is dead (blackholed): the first tunnel fails over after
    the connect timeout and succeeds; later tunnels go straight to the live address. (The live address is
    not the one the previous case used: the dialer tries the address that last worked first.)"""
    lab = dns_lab
    lab.relays["127.0.0.4"].blackhole()
    try:
        # Put the dead address where getaddrinfo (RFC 6724 sorting) returns it first.
        resolve(lab, f"127.0.0.4 {NAME}\n127.0.0.2 {NAME}\n")
        if gateway_order(lab)[0] != "127.0.0.4":
            resolve(lab, f"127.0.0.2 {NAME}\n127.0.0.4 {NAME}\n")
        order = gateway_order(lab)
        assert order[0] == "127.0.0.4", order
        before, closed = counts(lab), lab.proxy.closed()
        with ReadyWatch(lab.proxy) as ready:
            took = []
            for _ in range(3):
                started = time.monotonic()
                lab.net.call(roundtrip, lab.proxy.address)
                took.append(time.monotonic() - started)
        now = counts(lab)
        assert now["127.0.0.2"] - before["127.0.0.2"] == 3
        assert took[0] >= 0.5 and max(took[1:]) < 0.5, took
        expect_closed(lab.proxy, closed, completed=3)
        ready.check()
    finally:
        lab.relays["127.0.0.4"].serve()
    settled(lab.proxy, lab.fds)
