"""Native metrics, named by Prometheus conventions (`apiproxy_` prefix, base units, `_total`): plain figures
the event loop moves per tunnel event, turned into prometheus-client metric families only when /metrics is
scraped (`NativeMetrics` is the registry's Collector), and the text exposition of that registry.

Why not prometheus-client's Counter and Histogram: each call takes a lock and a histogram walks its
bounds in Python; with the access log that came to ~118,000 instructions (~47 µs here) per tunnel
(`python -m benchmarks.monitoring_cost --callgrind`). Here a tunnel costs integer additions and one
`bisect` per histogram.

Reads off the loop: counters are ints read whole; a dict of labelled counts is copied in one C call before
it is walked; a histogram keeps its buckets and sum in one list, which `snapshot()` copies in one C call,
and `observe()` updates with no call or loop between its two writes, where CPython's GIL never switches
threads - so buckets, count (their total) and sum always come from one moment.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from typing import cast

from .. import __version__
from ..reasons import Reason, Refusal


def _import_core() -> None:
    """Make prometheus-client's core modules importable without its package `__init__`, which imports the
    HTTP servers and push gateway client too (http.server, wsgiref, urllib.request, email: +5.1 MiB RSS
    and 75 modules, measured; the core pieces below cost 0.2 MiB). The bare package is forgotten again
    after, so a later `import prometheus_client` elsewhere loads the whole library, sharing these modules.
    """
    if "prometheus_client" in sys.modules:
        return
    spec = importlib.util.find_spec("prometheus_client")
    if spec is None:
        return  # not installed: the imports below say so
    sys.modules["prometheus_client"] = importlib.util.module_from_spec(spec)
    try:
        for name in ("registry", "metrics_core", "utils"):
            importlib.import_module(f"prometheus_client.{name}")
    finally:
        del sys.modules["prometheus_client"]


_import_core()
# Each `from` names its submodule, which is in sys.modules now: the package itself is not imported.
from prometheus_client.metrics_core import (  # noqa: E402
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry  # noqa: E402
from prometheus_client.utils import floatToGoString  # noqa: E402

# A value (or bound) as Go writes a float, as prometheus-client writes it; typed here, as the library is not.
go_float = cast(Callable[[float], str], floatToGoString)

# Seconds. CONNECT set-up is milliseconds on a healthy path, up to the connect and answer timeouts.
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Seconds. A kubectl call lasts milliseconds, a watch up to the idle timeout (an hour by default).
DURATION_BUCKETS = (0.01, 0.1, 1, 10, 60, 300, 900, 1800, 3600, 7200)
# Seconds. A lookup of the gateway's name.
DNS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)


class Histogram:
    """Counts per bucket over fixed upper bounds (a value goes to the first bound >= it: Prometheus' `le`;
    beyond the last, +Inf) and the sum of the values. Written on the event loop, read by the scrape thread.
    """

    __slots__ = ("bounds", "state")

    def __init__(self, bounds: Sequence[float]) -> None:
        # Floats: bisect compares a float with a float faster than with an int.
        self.bounds = tuple(map(float, bounds))
        # Per bucket (not cumulative; the last is +Inf), then the sum: one list, one copy in snapshot().
        self.state: list[float] = [0] * (len(self.bounds) + 1) + [0.0]

    def observe(self, value: float) -> None:
        state = self.state
        state[bisect_left(self.bounds, value)] += 1
        state[-1] += value

    def snapshot(self) -> tuple[list[float], float]:
        """Cumulative counts per bucket (+Inf last: the count) and the sum, from one copy of the state."""
        state = self.state.copy()
        total = state.pop()
        return list(accumulate(state)), total


class Durations:
    """How long tunnels lasted, for the native histogram (seconds) and Envoy's two (ms) at once: one bisect
    per tunnel instead of three. The buckets are over the union of all their bounds, in ms; a second set
    counts the tunnels that never reached the gateway nor tried to (Envoy's cluster histogram leaves them
    out: its buckets are the difference); then a sum per histogram, each added as its own histogram would.

    A value lands where each view's own histogram would put it: for a bound b in seconds, d <= b exactly
    when d * 1000 <= b * 1000 in floating point, because multiplying keeps the order and the next double
    above each of these b stays above b * 1000 (tests/monitoring/test_exposition.py checks it).
    """

    __slots__ = ("beside", "bounds_ms", "state")

    def __init__(self, bounds_s: Sequence[float], other_bounds_ms: Sequence[float] = ()) -> None:
        self.bounds_ms = tuple(sorted({b * 1000.0 for b in bounds_s} | set(map(float, other_bounds_ms))))
        self.beside = buckets = len(self.bounds_ms) + 1  # where the second set of buckets starts
        # All tunnels' buckets, those beside the gateway, then the sums: seconds, ms, ms of those at the gateway.
        self.state: list[float] = [0] * (2 * buckets) + [0.0, 0.0, 0.0]

    def observe(self, seconds: float, at_gateway: bool) -> None:
        state = self.state
        milliseconds = seconds * 1000
        index = bisect_left(self.bounds_ms, milliseconds)
        if at_gateway:
            state[index] += 1
            state[-3] += seconds
            state[-2] += milliseconds
            state[-1] += milliseconds
        else:
            state[index] += 1
            state[index + self.beside] += 1
            state[-3] += seconds
            state[-2] += milliseconds

    def views(
        self, bounds_ms: Sequence[float]
    ) -> tuple[tuple[list[float], float], tuple[list[float], float], tuple[list[float], float]]:
        """From one copy of the state, cumulative counts at `bounds_ms` (each one of this histogram's
        bounds) and +Inf, with a sum: all tunnels in seconds, all in ms, those at the gateway in ms."""
        state = self.state.copy()
        buckets = len(self.bounds_ms) + 1
        every = list(accumulate(state[:buckets]))
        beside = list(accumulate(state[buckets : 2 * buckets]))
        positions = [self.bounds_ms.index(float(b)) for b in bounds_ms] + [buckets - 1]
        all_counts = [every[p] for p in positions]
        gateway_counts = [every[p] - beside[p] for p in positions]
        return (all_counts, state[-3]), (all_counts, state[-2]), (gateway_counts, state[-1])


def _family(
    name: str, documentation: str, bounds: Sequence[float], cumulative: list[float], total: float
) -> HistogramMetricFamily:
    les = [go_float(b) for b in bounds] + ["+Inf"]
    return HistogramMetricFamily(name, documentation, buckets=list(zip(les, cumulative, strict=True)),
                                 sum_value=total)  # fmt: skip


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    return _family(name, documentation, histogram.bounds, *histogram.snapshot())


def _counter(
    name: str, documentation: str, labels: Sequence[str], counts: dict[tuple[str, ...], int]
) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, count in counts.items():
        family.add_metric(values, count)
    return family


class NativeMetrics(Collector):
    """The native figures. Ints, dicts and Histograms moved on the event loop by the observer; `collect()`
    builds the families from them on the scrape thread, in the order and with the help texts below.
    `other_duration_bounds_ms`: the bounds of other views of the tunnel durations (Envoy's)."""

    def __init__(self, other_duration_bounds_ms: Sequence[float] = ()) -> None:
        self.opened = 0
        # Counts by label, in order of first use as prometheus-client lists children (`+= 1` on a
        # defaultdict is one C lookup; only the loop indexes them, readers copy or use get()).
        self.closed: defaultdict[Reason, int] = defaultdict(int)
        self.rejected: defaultdict[Refusal, int] = defaultdict(int)
        self.received_bytes = 0  # from clients, published at close and every few seconds
        self.sent_bytes = 0  # to clients, likewise
        self.connect_duration = Histogram(CONNECT_BUCKETS)
        self.durations = Durations(DURATION_BUCKETS, other_duration_bounds_ms)
        self.vip_repairs: defaultdict[str, int] = defaultdict(int)
        self.dns_resolutions = 0
        self.dns_failures = 0
        self.dns_duration = Histogram(DNS_BUCKETS)
        self._active: Callable[[], float] = lambda: 0.0
        self._ready: Callable[[], float] = lambda: 0.0
        self._vip: tuple[Callable[[], float], Callable[[], int], Callable[[], int]] | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def watch(self, active: Callable[[], float], ready: Callable[[], float]) -> None:
        """Gauges read at scrape time from the proxy's own state."""
        self._active, self._ready = active, ready

    def watch_vip(
        self, present: Callable[[], float], passes: Callable[[], int], failures: Callable[[], int]
    ) -> None:
        """The managed VIP's gauge and the reconciler's pass counts, read at scrape time."""
        self._vip = (present, passes, failures)

    def collect(self) -> Iterable[Metric]:
        build = GaugeMetricFamily(
            "apiproxy_build_info",
            "Always 1; the labels say which apiproxy and Python run.",
            labels=["version", "python"],
        )
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        yield GaugeMetricFamily(
            "apiproxy_tunnels_active", "Client connections admitted and not yet closed.", value=self._active()
        )
        yield CounterMetricFamily(
            "apiproxy_tunnels_opened", "Client connections admitted.", value=self.opened
        )
        yield _counter(
            "apiproxy_tunnels_closed",
            "Tunnels ended, by outcome (success, failure) and reason (completed, gateway_rejected, ...).",
            ["outcome", "reason"],
            {(reason.outcome, reason.value): n for reason, n in self.closed.copy().items()},
        )
        yield _counter(
            "apiproxy_connections_rejected",
            "Client connections refused at accept, by reason (overflow: over --max-connections; source_limit: over --max-connections-per-source).",
            ["reason"],
            {(refusal.value,): n for refusal, n in self.rejected.copy().items()},
        )
        yield _histogram(
            "apiproxy_tunnel_connect_duration_seconds",
            "From accepting a client connection to the gateway's 2xx answer to the CONNECT.",
            self.connect_duration,
        )
        (counts, seconds), _, _ = self.durations.views([b * 1000.0 for b in DURATION_BUCKETS])
        yield _family(
            "apiproxy_tunnel_duration_seconds",
            "From accepting a client connection to the end of its tunnel.",
            DURATION_BUCKETS,
            counts,
            seconds,
        )
        yield CounterMetricFamily(
            "apiproxy_client_received_bytes",
            "Bytes read from clients and sent to the gateway (published at close and every few seconds).",
            value=self.received_bytes,
        )
        yield CounterMetricFamily(
            "apiproxy_client_sent_bytes",
            "Bytes received from the gateway and sent to clients (published at close and every few seconds).",
            value=self.sent_bytes,
        )
        yield _counter(
            "apiproxy_vip_repairs",
            "Times the VIP was (re)added to its interface, by trigger (initial, event, periodic).",
            ["trigger"],
            {(trigger,): n for trigger, n in self.vip_repairs.copy().items()},
        )
        yield CounterMetricFamily(
            "apiproxy_dns_resolutions", "Lookups of the gateway's name.", value=self.dns_resolutions
        )
        yield CounterMetricFamily(
            "apiproxy_dns_resolution_failures",
            "Lookups of the gateway's name that failed.",
            value=self.dns_failures,
        )
        yield _histogram(
            "apiproxy_dns_resolution_duration_seconds",
            "How long a lookup of the gateway's name took.",
            self.dns_duration,
        )
        yield GaugeMetricFamily("apiproxy_ready", "1 if /ready answers 200.", value=self._ready())
        if self._vip is not None:
            present, passes, failures = self._vip
            yield GaugeMetricFamily(
                "apiproxy_vip_present", "1 if the managed VIP is on its interface.", value=present()
            )
            yield CounterMetricFamily(
                "apiproxy_vip_sync_passes",
                "Passes of the VIP reconciler (initial, event, periodic).",
                value=passes(),
            )
            yield CounterMetricFamily(
                "apiproxy_vip_sync_failures", "Passes of the VIP reconciler that failed.", value=failures()
            )


def text_exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format (0.0.4) of `registry`, as prometheus-client's `generate_latest` writes
    it for these families: counters named with `_total`, label values escaped, values as Go writes floats.
    `generate_latest` itself lives in prometheus_client.exposition, with the HTTP servers (see above)."""
    out: list[str] = []
    for metric in registry.collect():
        name = f"{metric.name}_total" if metric.type == "counter" else metric.name
        documentation = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {documentation}\n# TYPE {name} {metric.type}\n")
        for sample in metric.samples:
            value = go_float(sample.value)
            if sample.labels:
                labels = ",".join(
                    f'{key}="{escape_label_value(text)}"' for key, text in sorted(sample.labels.items())
                )
                out.append(f"{sample.name}{{{labels}}} {value}\n")
            else:
                out.append(f"{sample.name} {value}\n")
    return "".join(out).encode()


def escape_label_value(value: str) -> str:
    """A label value as the text format needs it: backslash, newline and double quote escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
