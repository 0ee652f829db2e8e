"""The 17 Envoy metric names Gardener's Prometheus keeps, moved as Envoy moves them, in Envoy's exposition.

Envoy's names break Prometheus conventions (counters without `_total`, `_ms` histograms), and
prometheus-client insists on those conventions, so this module keeps the figures and writes the text
itself, exactly as Envoy's `/stats/prometheus` does (`# TYPE` lines, no `# HELP`). No I/O here.

How each figure moves was measured against Envoy 1.40 running Gardener's config in front of the lab
gateway (tests/monitoring/test_envoy_parity.py repeats the comparison):
- an admitted connection counts in `listener_downstream_cx_total` and `tcp_downstream_cx_total`; one
  over the listener's connection limit counts only in `listener_downstream_cx_overflow`;
- a tunnel the gateway refuses (301) is not `tcp_downstream_cx_no_route` (that means "no cluster");
  its CONNECT request and the gateway's answer count in the cluster's upstream byte counters, which
  include the CONNECT head bytes both ways;
- `cluster_upstream_cx_connect_ms` is sampled for each upstream TCP connection made,
  `cluster_upstream_cx_length_ms` for each one attempted (a refused connect too);
- `cluster_upstream_cx_none_healthy` counts tunnels that found no gateway address (DNS failed).
"""

from __future__ import annotations

import threading
from bisect import bisect_left

from ..addresses import host_port

# Envoy's default histogram bucket bounds (ms), as its Prometheus output lists them; then +Inf.
ENVOY_BUCKETS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000,
    3600000,
)  # fmt: skip

COUNTERS = (
    "cluster_bind_errors",
    "cluster_lb_healthy_panic",
    "cluster_update_attempt",
    "cluster_update_failure",
    "cluster_upstream_cx_none_healthy",
    "cluster_upstream_cx_rx_bytes_total",
    "cluster_upstream_cx_tx_bytes_total",
    "listener_downstream_cx_destroy",
    "listener_downstream_cx_overflow",
    "listener_downstream_cx_total",
    "tcp_downstream_cx_no_route",
    "tcp_downstream_cx_rx_bytes_total",
    "tcp_downstream_cx_total",
    "tcp_downstream_cx_tx_bytes_total",
)
HISTOGRAMS = (
    "cluster_upstream_cx_connect_ms",
    "cluster_upstream_cx_length_ms",
    "listener_downstream_cx_length_ms",
)
NAMES = tuple(sorted([f"envoy_{c}" for c in COUNTERS] + [f"envoy_{h}_bucket" for h in HISTOGRAMS]))


def listener_address_label(host: str, port: int) -> str:
    """Envoy's stat name for a listen address: `240.168.102.23_443`, `[__1]_443` (':' becomes '_')."""
    return host_port(host, port).replace(":", "_")


class Histogram:
    """Cumulative buckets over ENVOY_BUCKETS_MS. Written on the event loop, read by the scrape thread."""

    __slots__ = ("_lock", "count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(ENVOY_BUCKETS_MS) + 1)  # per bucket, not cumulative; last is +Inf
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect_left(ENVOY_BUCKETS_MS, value)  # first bound >= value: Prometheus' `le`
        with self._lock:
            self.counts[index] += 1
            self.sum += value
            self.count += 1

    def snapshot(self) -> tuple[list[int], float, int]:
        """Cumulative bucket counts (+Inf last), sum, count: one consistent view."""
        with self._lock:
            counts, total, count = list(self.counts), self.sum, self.count
        cumulative, running = [], 0
        for n in counts:
            running += n
            cumulative.append(running)
        return cumulative, total, count


class EnvoyStats:
    """The figures behind the 17 names. Counters are plain ints: one writer (the loop), GIL-atomic reads."""

    def __init__(self, cluster_name: str, stat_prefix: str, listener_address: str) -> None:
        self.labels = {
            "cluster": f'envoy_cluster_name="{_escape(cluster_name)}"',
            "listener": f'envoy_listener_address="{_escape(listener_address)}"',
            "tcp": f'envoy_tcp_prefix="{_escape(stat_prefix)}"',
        }
        self.cluster_bind_errors = 0
        self.cluster_lb_healthy_panic = 0
        self.cluster_update_attempt = 0
        self.cluster_update_failure = 0
        self.cluster_upstream_cx_none_healthy = 0
        self.cluster_upstream_cx_rx_bytes_total = 0
        self.cluster_upstream_cx_tx_bytes_total = 0
        self.listener_downstream_cx_destroy = 0
        self.listener_downstream_cx_overflow = 0
        self.listener_downstream_cx_total = 0
        self.tcp_downstream_cx_no_route = 0
        self.tcp_downstream_cx_rx_bytes_total = 0
        self.tcp_downstream_cx_total = 0
        self.tcp_downstream_cx_tx_bytes_total = 0
        self.cluster_upstream_cx_connect_ms = Histogram()
        self.cluster_upstream_cx_length_ms = Histogram()
        self.listener_downstream_cx_length_ms = Histogram()

    def render(self) -> str:
        """The Prometheus text of the 17 names, as Envoy writes it (sorted by name, like Envoy)."""
        entries: list[tuple[str, str]] = []
        for name in COUNTERS:
            labels = self.labels[name.split("_", 1)[0]]
            value = getattr(self, name)
            entries.append((name, f"# TYPE envoy_{name} counter\nenvoy_{name}{{{labels}}} {value}\n"))
        for name in HISTOGRAMS:
            labels = self.labels[name.split("_", 1)[0]]
            histogram: Histogram = getattr(self, name)
            cumulative, total, count = histogram.snapshot()
            lines = [f"# TYPE envoy_{name} histogram"]
            for bound, n in zip((*(_number(b) for b in ENVOY_BUCKETS_MS), "+Inf"), cumulative, strict=True):
                lines.append(f'envoy_{name}_bucket{{{labels},le="{bound}"}} {n}')
            lines.append(f"envoy_{name}_sum{{{labels}}} {_number(total)}")
            lines.append(f"envoy_{name}_count{{{labels}}} {count}")
            entries.append((name, "\n".join(lines) + "\n"))
        return "".join(text for _, text in sorted(entries))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
