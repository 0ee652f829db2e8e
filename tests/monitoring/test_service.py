"""`Monitoring` in-process beside a real `ProxyServer` and the lab gateway: readiness states, the
publication of long-lived tunnels' bytes, and the VIP and DNS hooks."""

from __future__ import annotations

import asyncio
import urllib.error
from collections.abc import Callable, Iterator

import pytest

from apiproxy.config import (
    ConfigError,
    DNSFamily,
    Endpoint,
    ListenerConfig,
    MonitoringConfig,
    ProxyConfig,
    TunnelConfig,
)
from apiproxy.handshake import build_connect_request
from apiproxy.monitoring import Monitoring
from apiproxy.server import ProxyServer

from .envoy_node import samples
from .lab import DESTINATION, echo_and_gateway, free_port, get

pytestmark = pytest.mark.envoy


class StandInVIP:
    """What Monitoring reads of apiproxy.vip.service.VIPService. The real one needs a network namespace
    and is tested under tests/vip; here only the two attributes monitoring uses matter."""

    def __init__(self) -> None:
        self.present = False
        self.passes = 0
        self.failed_passes = 0
        self.on_repair: Callable[[str], None] | None = None


@pytest.fixture(scope="module")
def gateway_port() -> Iterator[int]:
    with echo_and_gateway() as (_, gateway, _):
        yield gateway.port


def _config(gateway_port: int, metrics_port: int) -> ProxyConfig:
    authority = "api.example:443"
    return ProxyConfig(
        listener=ListenerConfig(listen=Endpoint("127.0.0.1", free_port())),
        # By name: the resolver looks it up, and the DNS hook sees it.
        tunnel=TunnelConfig(
            upstream=Endpoint("localhost", gateway_port),
            connect_authority=authority,
            connect_headers=(("X-Gardener-Destination", DESTINATION),),
            dns_family=DNSFamily.V4,
        ),
        monitoring=MonitoringConfig(addresses=(Endpoint("127.0.0.1", metrics_port),), access_log_format=None),
    )


async def _scrape(port: int) -> dict[str, float]:
    text = (await asyncio.to_thread(get, port, "/metrics"))[1]
    return {name + labels: value for (name, labels), value in samples(text).items()}


async def _ready(port: int) -> tuple[int, str]:
    return await asyncio.to_thread(get, port, "/ready")


def test_readiness_publication_and_hooks(gateway_port: int) -> None:
    metrics_port = free_port()
    config = _config(gateway_port, metrics_port)
    asyncio.run(asyncio.wait_for(_scenario(config, metrics_port), 60))


async def _scenario(config: ProxyConfig, metrics_port: int) -> None:
    server = ProxyServer(config.listener, config.tunnel)
    monitoring = Monitoring(config, server)
    server.observer = monitoring.observer
    vip = StandInVIP()
    monitoring.attach_vip(vip)  # type: ignore[arg-type]
    await monitoring.start()
    try:
        status, body = await _ready(metrics_port)
        assert (status, body) == (
            503,
            f"not ready: not listening on 127.0.0.1:{config.listener.listen.port}\n",
        )
        await server.start()
        assert await _ready(metrics_port) == (503, "not ready: the VIP is not on its interface\n")
        vip.present = True
        assert vip.on_repair is not None
        vip.on_repair("initial")
        vip.passes, vip.failed_passes = 3, 1
        vip.on_repair("event")
        assert await _ready(metrics_port) == (200, "ready\n")

        reader, writer = await asyncio.open_connection("127.0.0.1", config.listener.listen.port)
        writer.write(b"a" * 3000)
        assert await reader.readexactly(3000) == b"a" * 3000
        before = await _scrape(metrics_port)
        assert before["apiproxy_client_received_bytes_total"] == 0  # nothing per chunk
        assert before["apiproxy_tunnels_active"] == 1
        monitoring.observer.publish_open()  # what the periodic task does every few seconds
        during = await _scrape(metrics_port)
        assert during["apiproxy_client_received_bytes_total"] == 3000
        assert during["apiproxy_client_sent_bytes_total"] == 3000
        assert during['envoy_tcp_downstream_cx_rx_bytes_total{envoy_tcp_prefix="kube_apiserver"}'] == 3000
        writer.write(b"b" * 500)
        assert await reader.readexactly(500) == b"b" * 500
        writer.close()
        for _ in range(100):
            if not server.tunnels:
                break
            await asyncio.sleep(0.02)
        after = await _scrape(metrics_port)
        assert after["apiproxy_client_received_bytes_total"] == 3500  # the rest at close, nothing twice
        assert after["apiproxy_client_sent_bytes_total"] == 3500
        request = len(
            build_connect_request(config.tunnel.connect_authority, list(config.tunnel.connect_headers))
        )
        assert (
            after['envoy_cluster_upstream_cx_tx_bytes_total{envoy_cluster_name="kube_apiserver"}']
            == 3500 + request
        )
        assert after['apiproxy_tunnels_closed_total{outcome="success",reason="completed"}'] == 1
        assert after['apiproxy_vip_repairs_total{trigger="event"}'] == 1
        assert after["apiproxy_vip_present"] == 1
        assert after["apiproxy_vip_sync_passes_total"] == 3
        assert after["apiproxy_vip_sync_failures_total"] == 1
        assert after["apiproxy_dns_resolutions_total"] == 1
        assert after["apiproxy_dns_resolution_failures_total"] == 0
        assert after['envoy_cluster_update_attempt{envoy_cluster_name="kube_apiserver"}'] == 1
        assert after["apiproxy_ready"] == 1

        server.context.draining = True
        assert await _ready(metrics_port) == (503, "not ready: draining\n")
        vip.present = False
        assert (await _scrape(metrics_port))["apiproxy_vip_present"] == 0
    finally:
        await server.drain(1)
        await monitoring.stop()
    # Stopped: nothing listens any more.
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        await asyncio.to_thread(get, metrics_port, "/ready", 1)


def test_an_unwritable_access_log_format_is_a_config_error() -> None:
    config = _config(9, free_port())
    config = ProxyConfig(
        listener=config.listener,
        tunnel=config.tunnel,
        monitoring=MonitoringConfig(access_log_format="[%START_TIME%] %REQ(:PATH)%\n"),
    )
    with pytest.raises(ConfigError, match=r"^access log format: expected an Envoy access-log format .*%REQ%"):
        Monitoring(config, ProxyServer(config.listener, config.tunnel))
