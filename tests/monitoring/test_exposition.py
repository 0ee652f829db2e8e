"""/metrics as a scrape sees it, pinned: every name, type, HELP text, label set and value of the native and
Envoy-compatible views after a fixed sequence of tunnel, refusal, DNS and VIP events, and the access-log
lines of those tunnels. `exposition.txt` was written by the implementation on prometheus-client's own
Counter/Gauge/Histogram objects (commit 0f8fba4) from this same sequence; the plain figures and the
scrape-time collector must write it byte for byte.

Also: the text writer against prometheus-client's `generate_latest`, a histogram read while the loop writes
it, and what importing the monitoring package loads.
"""

from __future__ import annotations

import io
import math
import platform
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from apiproxy import __version__
from apiproxy.config import Endpoint, ListenerConfig, MonitoringConfig, ProxyConfig, TunnelConfig
from apiproxy.monitoring import Monitoring
from apiproxy.monitoring.envoy_stats import COUNTERS, ENVOY_BUCKETS_MS, HISTOGRAMS, NAMES
from apiproxy.monitoring.metrics import DURATION_BUCKETS, Durations, Histogram, NativeMetrics, text_exposition
from apiproxy.reasons import Reason, Refusal
from apiproxy.server import ProxyServer
from apiproxy.tunnel import Phase, Tunnel, UpstreamSide

GOLDEN = Path(__file__).with_name("exposition.txt")
# A histogram's samples: its buckets by `le`, its count and its sum.
HISTOGRAM: dict[str, list[tuple[str, ...]]] = {"_bucket": [("le",)], "_count": [()], "_sum": [()]}


class StandInVIP:
    """The attributes Monitoring reads of a VIPService (the real one is tested under tests/vip)."""

    present = True
    passes = 4
    failed_passes = 1
    on_repair = None


class StandInClient:
    """A client connection as far as the observer asks: its address (the tunnel reads it when needed)."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default


def scripted(upstream_host: str, envoy_names: bool = True) -> str:
    """The exposition and the access log after the fixed sequence, separated by a `----` line."""
    config = ProxyConfig(
        listener=ListenerConfig(listen=Endpoint("240.168.102.23", 443)),
        tunnel=TunnelConfig(
            upstream=Endpoint(upstream_host, 8443),
            connect_authority="api.x:443",
            connect_headers=(
                ("X-Gardener-Destination", "outbound|443||kube-apiserver.shoot--a--b.svc.cluster.local"),
            ),
        ),
        monitoring=MonitoringConfig(
            addresses=(Endpoint("127.0.0.1", 0),), envoy_compatible_metrics=envoy_names
        ),
    )
    server = ProxyServer(config.listener, config.tunnel)
    monitoring = Monitoring(config, server)
    server.observer = monitoring.observer
    assert monitoring.access_log is not None
    stream = io.StringIO()
    monitoring.access_log.stream = stream
    vip = StandInVIP()
    monitoring.attach_vip(vip)  # type: ignore[arg-type]
    observer, context = monitoring.observer, server.context

    def opened(n: int, connected: bool = True, established: bool = True, head: int = 19) -> Tunnel:
        tunnel = Tunnel(context)
        tunnel.transport = StandInClient(("10.0.3.7", 40000 + n) if n % 3 else ("fd00::7", 40000 + n))  # type: ignore[assignment]
        tunnel.started_wall = 1790000000.1234567 + n * 0.37
        tunnel.started_at = 1000.0 + n
        context.tunnels.add(tunnel)
        observer.tunnel_opened(tunnel)
        if connected:
            upstream = UpstreamSide(tunnel)
            upstream.head_bytes = head
            tunnel.upstream = upstream
            tunnel.upstream_address = (2, ("10.250.0.9", 8443))
            tunnel.connected_at = tunnel.started_at + 0.0004 * (n + 1)
        if established:
            tunnel.phase = Phase.RELAYING
            observer.tunnel_established(tunnel, 0.0009 * (n + 1))
        return tunnel

    def closed(tunnel: Tunnel, reason: Reason | None, rx: int = 100, tx: int = 200, code: int = 200,
               duration: float = 0.0042) -> None:  # fmt: skip
        tunnel.rx_bytes = rx
        if tunnel.upstream is not None:
            tunnel.upstream.rx_bytes = tx
        tunnel.reason, tunnel.response_code = reason, code
        tunnel.ended_at = tunnel.started_at + duration
        tunnel.phase = Phase.ENDED
        context.tunnels.discard(tunnel)
        observer.tunnel_closed(tunnel)

    observer.dns_resolved(True, 0.002)
    observer.dns_resolved(False, 0.7)
    assert vip.on_repair is not None
    for trigger in ("initial", "event", "event"):
        vip.on_repair(trigger)
    tunnels = [opened(n, **options) for n, options in enumerate([
        {}, {}, {"established": False, "head": 120},
        {"connected": False, "established": False}, {"connected": False, "established": False},
        {"connected": False, "established": False}, {}, {},
    ])]  # fmt: skip
    # A long-lived tunnel's bytes published while it is open: only the rest counts at its close.
    tunnels[6].rx_bytes = 1000
    assert tunnels[6].upstream is not None
    tunnels[6].upstream.rx_bytes = 2000
    observer.publish_open()
    closed(tunnels[0], Reason.COMPLETED)
    closed(tunnels[1], Reason.COMPLETED, duration=12.5, rx=5000, tx=70000)
    closed(tunnels[2], Reason.GATEWAY_REJECTED, code=301)
    closed(tunnels[3], Reason.CONNECT_REFUSED, code=0)
    closed(tunnels[4], Reason.DNS_FAILURE, code=0)
    closed(tunnels[5], Reason.DOWNSTREAM_CLOSED_EARLY, code=0, rx=0, tx=0, duration=0.0001)
    closed(tunnels[6], Reason.UPSTREAM_RESET, duration=3700, rx=123456789, tx=987654321)
    closed(tunnels[7], None, duration=0.5)
    observer.connection_rejected(Refusal.OVERFLOW, ("10.0.0.1", 1))
    observer.connection_rejected(Refusal.SOURCE_LIMIT, None)
    observer.connection_rejected(Refusal.SOURCE_LIMIT, ("10.0.0.1", 2))
    opened(8)  # still open
    monitoring.access_log.flush()
    return monitoring.exposition().decode() + "----\n" + stream.getvalue()


def golden() -> str:
    build = f'apiproxy_build_info{{python="{platform.python_version()}",version="{__version__}"}} 1.0'
    return GOLDEN.read_text().replace('apiproxy_build_info{python="3.11.7",version="0.1.0"} 1.0', build)


def test_the_scrape_and_the_access_log_are_as_pinned() -> None:
    assert scripted("10.250.0.9") == golden()


def test_with_a_gateway_name_only_dns_figures_and_unconnected_tunnels_differ() -> None:
    """By name, Envoy counts no resolution at start, and a tunnel that never reached the gateway names no
    gateway in the access log (nothing is resolved in this test)."""
    expected = golden().replace('envoy_cluster_update_attempt{envoy_cluster_name="kube_apiserver"} 3',
                                'envoy_cluster_update_attempt{envoy_cluster_name="kube_apiserver"} 2')  # fmt: skip
    lines = expected.splitlines(keepends=True)
    for n, line in enumerate(lines):
        if line.startswith("[") and not line.startswith(("[2026-09-21T14:13:20", "[2026-09-21T14:13:22")):
            lines[n] = line.replace('"10.250.0.9:8443"', '"-"')
    assert scripted("api.example") == "".join(lines)


def test_every_name_type_and_label_set() -> None:
    """The list an operator's dashboards and alerts depend on, spelled out: each TYPE line's name and type,
    and each sample name with the label names it carries."""
    text = scripted("10.250.0.9").split("----\n")[0]
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    samples: dict[str, set[tuple[str, ...]]] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, _, labels = line.partition("{")
            samples.setdefault(name.split()[0], set()).add(tuple(re.findall(r'(\w+)="', labels)))
    native = {
        "apiproxy_build_info": ("gauge", {"": [("python", "version")]}),
        "apiproxy_tunnels_active": ("gauge", {"": [()]}),
        "apiproxy_tunnels_opened_total": ("counter", {"": [()]}),
        "apiproxy_tunnels_closed_total": ("counter", {"": [("outcome", "reason")]}),
        "apiproxy_connections_rejected_total": ("counter", {"": [("reason",)]}),
        "apiproxy_tunnel_connect_duration_seconds": ("histogram", HISTOGRAM),
        "apiproxy_tunnel_duration_seconds": ("histogram", HISTOGRAM),
        "apiproxy_client_received_bytes_total": ("counter", {"": [()]}),
        "apiproxy_client_sent_bytes_total": ("counter", {"": [()]}),
        "apiproxy_vip_repairs_total": ("counter", {"": [("trigger",)]}),
        "apiproxy_dns_resolutions_total": ("counter", {"": [()]}),
        "apiproxy_dns_resolution_failures_total": ("counter", {"": [()]}),
        "apiproxy_dns_resolution_duration_seconds": ("histogram", HISTOGRAM),
        "apiproxy_ready": ("gauge", {"": [()]}),
        "apiproxy_vip_present": ("gauge", {"": [()]}),
        "apiproxy_vip_sync_passes_total": ("counter", {"": [()]}),
        "apiproxy_vip_sync_failures_total": ("counter", {"": [()]}),
    }
    envoy_label = {
        "cluster": "envoy_cluster_name",
        "listener": "envoy_listener_address",
        "tcp": "envoy_tcp_prefix",
    }
    envoy = {
        f"envoy_{name}": (
            kind,
            {"": [(envoy_label[name.split("_")[0]],)]}
            if kind == "counter"
            else {
                suffix: [(envoy_label[name.split("_")[0]], *labels[0])]
                for suffix, labels in HISTOGRAM.items()
            },
        )
        for name, kind in [(c, "counter") for c in COUNTERS] + [(h, "histogram") for h in HISTOGRAMS]
    }
    expected_types = {name: kind for name, (kind, _) in {**native, **envoy}.items()}
    expected_samples = {
        name + suffix: set(labels) for name, (_, shapes) in {**native, **envoy}.items()
        for suffix, labels in shapes.items()
    }  # fmt: skip
    assert types == expected_types
    assert samples == expected_samples
    assert len(envoy) == 17 and set(NAMES) <= set(samples)


def test_the_text_is_prometheus_clients_own() -> None:
    """The text writer (the library's generate_latest comes with its HTTP servers) writes what it writes."""
    from prometheus_client import generate_latest

    native = NativeMetrics()
    native.watch(active=lambda: 3, ready=lambda: 1.0)
    native.watch_vip(lambda: 0.0, lambda: 7, lambda: 0)
    native.opened, native.received_bytes = 12, 2**40
    native.closed.update({Reason.COMPLETED: 9, Reason.ANSWER_TIMEOUT: 2})
    native.vip_repairs['odd "trigger"\\\n'] = 1  # escaping, though no trigger is spelled so
    for value in (0.0004, 0.003, 0.2, 31.0):
        native.connect_duration.observe(value)
    assert text_exposition(native.registry) == generate_latest(native.registry)


def test_a_histogram_read_while_it_is_written_is_always_one_moment() -> None:
    """Buckets, count and sum from one copy: with every value 1.0, a snapshot's sum equals its count,
    however the writer and the reader interleave."""
    histogram = Histogram((0.5, 2.0))
    stop = threading.Event()

    def write() -> None:
        for _ in range(200_000):
            if stop.is_set():
                break
            histogram.observe(1.0)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(20_000):
            cumulative, total = histogram.snapshot()
            assert cumulative[0] == 0 and cumulative[1] == cumulative[2] == total
    finally:
        stop.set()
        writer.join(30)


def test_durations_land_in_each_views_own_bucket() -> None:
    """One bisect in ms serves the native histogram in seconds: exact, as no double above a native bound
    b multiplies to b * 1000 or less (and multiplying keeps the order)."""
    for bound in DURATION_BUCKETS:
        above = math.nextafter(float(bound), math.inf)
        assert above * 1000 > bound * 1000 >= float(bound) * 1000
    durations = Durations(DURATION_BUCKETS, ENVOY_BUCKETS_MS)
    for seconds in (0.0004, 0.01, math.nextafter(0.01, 1), 0.5, 900.0, 7200.0, 7201.0):
        durations.observe(seconds, at_gateway=seconds < 1)
    (native, seconds_sum), (listener, ms_sum), (cluster, cluster_sum) = durations.views(
        [b * 1000.0 for b in DURATION_BUCKETS]
    )
    # le: 0.01 0.1 1 10 60 300 900 1800 3600 7200 +Inf
    assert native == [2, 3, 4, 4, 4, 4, 5, 5, 5, 6, 7]
    assert cluster == [2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    assert listener == native and seconds_sum * 1000 == pytest.approx(ms_sum) and cluster_sum < 1000


def test_importing_monitoring_loads_no_http_server_and_leaves_the_library_whole() -> None:
    """prometheus-client's package imports http.server, wsgiref, urllib.request and email (+5 MiB RSS);
    monitoring loads only its core modules, and a later `import prometheus_client` still gets it all."""
    probe = (
        "import sys\n"
        "import apiproxy.monitoring\n"
        "heavy = sorted({'http.server', 'wsgiref', 'urllib.request', 'email', 'prometheus_client.exposition'}"
        " & set(sys.modules))\n"
        "print(heavy)\n"
        "import prometheus_client\n"
        "print(callable(prometheus_client.generate_latest), prometheus_client.registry.REGISTRY is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "True True"]


def test_without_envoy_names_the_native_view_is_unchanged() -> None:
    exposition_text, log = scripted("10.250.0.9", envoy_names=False).split("----\n")
    native, _, _ = golden().partition("# TYPE envoy_")
    assert exposition_text == native
    assert log == golden().split("----\n")[1]
