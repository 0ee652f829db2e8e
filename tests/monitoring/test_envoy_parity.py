"""The 17 Envoy-compatible metrics move as a real Envoy's do: the real Envoy with Gardener's config and
`apiproxy run` sit side by side in front of the same lab gateway and get the same traffic: k tunnels of
n bytes, one connection over the connection limit, one tunnel while the gateway is down, and one the
gateway refuses with 301. Then every counter must agree, and each histogram's sample count.

Two figures cannot agree byte for byte and are compared by what they mean: the upstream bytes sent
include each proxy's own CONNECT request (Envoy's carries more headers), and `cluster_update_attempt`
counts Envoy's timer-driven DNS refreshes (every 5 s), which apiproxy does on demand.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from apiproxy.handshake import build_connect_request
from apiproxy.monitoring.envoy_stats import NAMES
from lab.gateway import DESTINATION, EnvoyProcess, GatewayConfig, start_gateway

from .envoy_node import envoy_prometheus, samples, start_node_envoy
from .lab import EchoThread, apiproxy, echo_tunnel, get, wait_for

pytestmark = pytest.mark.envoy

TUNNELS = 3
PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes
LIMIT = 2
ACCESS_LINE = re.compile(
    r'^\[(\S+)\] (\d+) (\S+) (\d+) rx (\d+) tx (\d+)ms "([^"]*)" "([^"]*)"$', re.MULTILINE
)


def _held_tunnel(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"held")
    assert sock.recv(16) == b"held"  # established end to end
    return sock


def _over_the_limit(port: int) -> bytes:
    return echo_tunnel(port, b"over the limit", timeout=5)


class Lab:
    def __init__(self, echo: EchoThread) -> None:
        self.echo = echo
        self.gateway_config = GatewayConfig(clusters={DESTINATION: ("127.0.0.1", echo.port)})
        self.gateway: EnvoyProcess | None = start_gateway(self.gateway_config)

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None

    def start_refusing_gateway(self) -> None:
        """The gateway again on the same port, routing only on a header the proxies do not send: 301."""
        config = GatewayConfig(
            clusters=self.gateway_config.clusters, port=self.gateway_config.port, header="X-Not-Sent"
        )
        self.gateway = start_gateway(config)


@pytest.fixture
def lab() -> Iterator[Lab]:
    echo = EchoThread()
    try:
        lab = Lab(echo)
        try:
            yield lab
        finally:
            lab.stop_gateway()
    finally:
        echo.stop()


def _settled(proxy_metrics: dict[tuple[str, str], float], prefix: str) -> bool:
    """Every admitted connection has been destroyed."""
    total = sum(v for (n, _), v in proxy_metrics.items() if n == f"{prefix}listener_downstream_cx_total")
    destroyed = sum(
        v for (n, _), v in proxy_metrics.items() if n == f"{prefix}listener_downstream_cx_destroy"
    )
    return total > 0 and total == destroyed


def test_envoy_metrics_move_as_the_real_envoys(lab: Lab) -> None:
    assert lab.gateway is not None
    envoy, envoy_port = start_node_envoy(lab.gateway_config.port, LIMIT)
    try:
        with apiproxy(
            lab.gateway_config.port,
            "--max-connections",
            str(LIMIT),
            "--max-connections-per-source",
            str(LIMIT),
        ) as (
            proxy,
            proxy_port,
            metrics,
        ):
            ports = {"envoy": envoy_port, "apiproxy": proxy_port}
            # k tunnels of n bytes each
            for port in ports.values():
                for _ in range(TUNNELS):
                    assert echo_tunnel(port, PAYLOAD) == PAYLOAD
            # one over the connection limit: reset at accept, never tunnelled
            for port in ports.values():
                held = [_held_tunnel(port) for _ in range(LIMIT)]
                try:
                    assert _over_the_limit(port) == b""
                finally:
                    for sock in held:
                        sock.close()
            # the gateway is down: the connect fails
            lab.stop_gateway()
            for port in ports.values():
                assert echo_tunnel(port, b"nobody there", timeout=10) == b""
            # the gateway refuses the CONNECT with a 301
            lab.start_refusing_gateway()
            for port in ports.values():
                assert echo_tunnel(port, b"refused", timeout=10) == b""

            def scrape_both() -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
                return samples(envoy_prometheus(envoy)), samples(get(metrics, "/metrics")[1])

            wait_for(lambda: all(_settled(m, "envoy_") for m in scrape_both()), timeout=10, interval=0.2)
            real, ours = scrape_both()
            time.sleep(0.3)  # Envoy's access log reaches its file within 50 ms
            envoy_log, proxy_log = envoy.log_path.read_text(), proxy.stdout()
    finally:
        envoy.stop()

    compare(real, ours, envoy_port, proxy_port)
    compare_access_logs(envoy_log, proxy_log)


def _by_name(metrics: dict[tuple[str, str], float]) -> dict[str, tuple[str, float]]:
    """Envoy-compatible sample name (histograms: their _count) -> (labels, value)."""
    wanted = {n.removesuffix("_bucket") + ("_count" if n.endswith("_bucket") else "") for n in NAMES}
    found: dict[str, tuple[str, float]] = {}
    for (name, labels), value in metrics.items():
        if name in wanted and ("kube_apiserver" in labels or "envoy_listener_address" in labels):
            assert name not in found, f"{name} twice: {labels} and {found[name][0]}"
            found[name] = (labels, value)
    return found


def _bounds(metrics: dict[tuple[str, str], float], name: str) -> list[str]:
    return sorted(
        re.findall(r'le="([^"]*)"', labels)[0] for (n, labels) in metrics if n == name and "uds" not in labels
    )


def compare(
    real: dict[tuple[str, str], float], ours: dict[tuple[str, str], float], envoy_port: int, proxy_port: int
) -> None:
    envoy_figures, our_figures = _by_name(real), _by_name(ours)
    assert set(our_figures) == set(envoy_figures), set(envoy_figures) ^ set(our_figures)
    assert len(our_figures) == 17
    # Each histogram has Envoy's buckets.
    for name in NAMES:
        if name.endswith("_bucket"):
            assert _bounds(real, name) == _bounds(ours, name), name

    mismatches = []
    for name, (real_labels, real_value) in sorted(envoy_figures.items()):
        our_labels, our_value = our_figures[name]
        expected_labels = real_labels.replace(f"127.0.0.1_{envoy_port}", f"127.0.0.1_{proxy_port}")
        if our_labels != expected_labels:
            mismatches.append(f"{name}: labels {our_labels} != {expected_labels}")
        if name in ("envoy_cluster_upstream_cx_tx_bytes_total", "envoy_cluster_update_attempt"):
            continue
        if our_value != real_value:
            mismatches.append(f"{name}: apiproxy {our_value:g} != Envoy {real_value:g}")
    assert not mismatches, "\n".join(mismatches)

    # Upstream bytes sent = bytes from clients + one CONNECT request per upstream connection made, each
    # proxy with its own request; the bytes from clients are the same (compared above).
    connections = envoy_figures["envoy_cluster_upstream_cx_connect_ms_count"][1]
    assert connections == TUNNELS + LIMIT + 1  # the 301 one connected too
    client_bytes = envoy_figures["envoy_tcp_downstream_cx_rx_bytes_total"][1]
    assert client_bytes == TUNNELS * len(PAYLOAD) + LIMIT * len(b"held")
    real_request = (envoy_figures["envoy_cluster_upstream_cx_tx_bytes_total"][1] - client_bytes) / connections
    assert real_request.is_integer() and real_request > 100  # every CONNECT alike, as expected
    our_request = len(build_connect_request("127.0.0.1:443", [("X-Gardener-Destination", DESTINATION)]))
    assert (
        our_figures["envoy_cluster_upstream_cx_tx_bytes_total"][1] == client_bytes + connections * our_request
    )
    # A gateway given by address: Envoy "resolves" it at start and then every 5 s, apiproxy once.
    assert envoy_figures["envoy_cluster_update_attempt"][1] >= 1
    assert our_figures["envoy_cluster_update_attempt"][1] == 1
    # The traffic moved what it should have (a check that the comparison is not 0 == 0 everywhere).
    assert envoy_figures["envoy_listener_downstream_cx_overflow"][1] == 1
    assert envoy_figures["envoy_tcp_downstream_cx_total"][1] == TUNNELS + LIMIT + 2
    assert envoy_figures["envoy_tcp_downstream_cx_no_route"][1] == 0


def compare_access_logs(envoy_log: str, proxy_log: str) -> None:
    """Same lines apart from RESPONSE_CODE (the CONNECT status in apiproxy's, always 0 in Envoy's)."""

    def fields(text: str) -> list[tuple[str, str, str]]:
        return sorted((m.group(3), m.group(4), m.group(5)) for m in ACCESS_LINE.finditer(text))

    assert fields(proxy_log) == fields(envoy_log)
    codes = sorted(int(m.group(2)) for m in ACCESS_LINE.finditer(proxy_log))
    assert codes == [0, 200, 200, 200, 200, 200, 301]
