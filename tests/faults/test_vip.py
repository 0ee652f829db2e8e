"""Case 4: the VIP removed and re-added under open tunnels. apiproxy keeps 240.168.102.23 on `lo` of a
network namespace of the test's own and listens on it; the real Envoy gateway and the echo backend run in
the same namespace. While a tunnel streams data and another sits idle, the VIP is deleted three times;
the reconciler puts it back (netlink events), the open tunnels lose nothing, new tunnels work.
"""

from __future__ import annotations

import collections
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab.gateway import DESTINATION, GatewayConfig, start_gateway

from .lab import (
    Echo,
    Held,
    Net,
    Proxy,
    ReadyWatch,
    Stream,
    expect_closed,
    network_namespace,
    roundtrip,
    settled,
    wait_for,
)

pytestmark = [pytest.mark.envoy, pytest.mark.netns]
VIP = "240.168.102.23"


def repairs(proxy: Proxy) -> float:
    """VIP re-additions triggered by netlink events."""
    return proxy.metrics().get('apiproxy_vip_repairs_total{trigger="event"}', 0.0)


def has_vip(netns: str) -> bool:
    done = subprocess.run(["ip", "-n", netns, "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return f" {VIP}/" in done.stdout


@pytest.fixture
def vip_lab() -> Iterator[tuple[str, Net, Proxy]]:
    with network_namespace() as netns:
        net = Net(netns)
        parts: list[Any] = []
        try:
            echo = Echo(net)
            parts.append(echo)
            config = GatewayConfig(clusters={DESTINATION: ("127.0.0.1", echo.port)})
            parts.append(start_gateway(config, command_prefix=net.prefix()))
            proxy = Proxy(net, f"127.0.0.1:{config.port}", "--ip-address", VIP, "--interface", "lo",
                          listen=f"{VIP}:443")  # fmt: skip
            parts.append(proxy.start())
            wait_for(lambda: has_vip(netns), 5, "VIP on lo")
            yield netns, net, proxy
        finally:
            for part in reversed(parts):
                part.stop()
            net.close()


def test_vip_removed_under_open_tunnels(vip_lab: tuple[str, Net, Proxy]) -> None:
    netns, net, proxy = vip_lab
    net.call(roundtrip, proxy.address)
    fds = proxy.fds()
    repairs_before = repairs(proxy)
    with ReadyWatch(proxy) as ready:
        idle = net.call(Held, proxy.address)
        stream = net.call(Stream, proxy.address)
        repaired_in = []
        for _ in range(3):
            time.sleep(0.3)
            subprocess.run(["ip", "-n", netns, "addr", "del", f"{VIP}/32", "dev", "lo"], check=True)
            started = time.monotonic()
            wait_for(lambda: has_vip(netns), 2, "VIP re-added")
            repaired_in.append(time.monotonic() - started)
        time.sleep(0.3)
        moved = net.call(stream.finish)  # every byte streamed across the removals came back intact
        net.call(idle.exchange)
        net.call(idle.close)
        net.call(roundtrip, proxy.address)
    print(
        f"VIP repaired in {[f'{t * 1000:.0f} ms' for t in repaired_in]}; {moved >> 20} MiB streamed meanwhile"
    )
    assert moved > 0
    assert repairs(proxy) - repairs_before == 3
    expect_closed(proxy, collections.Counter(completed=1), completed=3)  # 1: the warm-up round trip
    # /ready tells the truth: 503 while the VIP is gone (if a probe lands in the gap), 200 once it is back.
    ready.check(allowed=(200, 503))
    assert ready.samples[-1][1] == 200
    settled(proxy, fds)
