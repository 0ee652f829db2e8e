"""Native metrics, named by Prometheus conventions (`apiproxy_` prefix, base units, `_total`), in a
prometheus-client registry of their own. Updated on the event loop per tunnel event, never per chunk;
read by the scrape thread (prometheus-client is thread-safe).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__

# Seconds. CONNECT set-up is milliseconds on a healthy path, up to the connect and answer timeouts.
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Seconds. A kubectl call lasts milliseconds, a watch up to the idle timeout (an hour by default).
DURATION_BUCKETS = (0.01, 0.1, 1, 10, 60, 300, 900, 1800, 3600, 7200)


class NativeMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.build_info = Gauge(
            "apiproxy_build_info",
            "Always 1; the labels say which apiproxy and Python run.",
            ["version", "python"],
            registry=registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.tunnels_active = Gauge(
            "apiproxy_tunnels_active", "Client connections admitted and not yet closed.", registry=registry
        )
        self.tunnels_opened = Counter(
            "apiproxy_tunnels_opened", "Client connections admitted.", registry=registry
        )
        self.tunnels_closed = Counter(
            "apiproxy_tunnels_closed",
            "Tunnels ended, by outcome (success, failure) and reason (completed, gateway_rejected, ...).",
            ["outcome", "reason"],
            registry=registry,
        )
        self.connections_rejected = Counter(
            "apiproxy_connections_rejected",
            "Client connections refused at accept, by reason (overflow: over --max-connections; draining).",
            ["reason"],
            registry=registry,
        )
        self.connect_duration = Histogram(
            "apiproxy_tunnel_connect_duration_seconds",
            "From accepting a client connection to the gateway's 2xx answer to the CONNECT.",
            buckets=CONNECT_BUCKETS,
            registry=registry,
        )
        self.tunnel_duration = Histogram(
            "apiproxy_tunnel_duration_seconds",
            "From accepting a client connection to the end of its tunnel.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.received_bytes = Counter(
            "apiproxy_client_received_bytes",
            "Bytes read from clients and sent to the gateway (published at close and every few seconds).",
            registry=registry,
        )
        self.sent_bytes = Counter(
            "apiproxy_client_sent_bytes",
            "Bytes received from the gateway and sent to clients (published at close and every few seconds).",
            registry=registry,
        )
        self.vip_repairs = Counter(
            "apiproxy_vip_repairs",
            "Times the VIP was (re)added to its interface, by trigger (initial, event, periodic).",
            ["trigger"],
            registry=registry,
        )
        self.vip_present: Gauge | None = None  # only when the VIP is managed
        self.dns_resolutions = Counter(
            "apiproxy_dns_resolutions", "Lookups of the gateway's name.", registry=registry
        )
        self.dns_failures = Counter(
            "apiproxy_dns_resolution_failures",
            "Lookups of the gateway's name that failed.",
            registry=registry,
        )
        self.dns_duration = Histogram(
            "apiproxy_dns_resolution_duration_seconds",
            "How long a lookup of the gateway's name took.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=registry,
        )
        self.ready = Gauge("apiproxy_ready", "1 if /ready answers 200.", registry=registry)

    def watch(self, active: Callable[[], float], ready: Callable[[], float]) -> None:
        """Gauges read at scrape time from the proxy's own state."""
        self.tunnels_active.set_function(active)
        self.ready.set_function(ready)

    def watch_vip(
        self, present: Callable[[], float], passes: Callable[[], int], failures: Callable[[], int]
    ) -> None:
        self.vip_present = Gauge(
            "apiproxy_vip_present", "1 if the managed VIP is on its interface.", registry=self.registry
        )
        self.vip_present.set_function(present)
        self.registry.register(_VIPPasses(passes, failures))


class _VIPPasses(Collector):
    """The VIP reconciler's own pass counts, read at scrape time."""

    def __init__(self, passes: Callable[[], int], failures: Callable[[], int]) -> None:
        self.passes = passes
        self.failures = failures

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "apiproxy_vip_sync_passes",
            "Passes of the VIP reconciler (initial, event, periodic).",
            value=self.passes(),
        )
        yield CounterMetricFamily(
            "apiproxy_vip_sync_failures", "Passes of the VIP reconciler that failed.", value=self.failures()
        )
