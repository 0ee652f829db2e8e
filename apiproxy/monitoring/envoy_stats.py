"""The 17 Envoy metric names Gardener's Prometheus keeps, moved as Envoy moves them, in Envoy's exposition.

Envoy's names break Prometheus conventions (counters without `_total`, `_ms` histograms), and
prometheus-client insists on those conventions, so this module writes the text itself, exactly as
Envoy's `/stats/prometheus` does (`# TYPE` lines, no `# HELP`). No I/O here.

Most figures are counted once, by the native metrics, and read from there at scrape time (an admitted
connection is `apiproxy_tunnels_opened_total` and both `*_downstream_cx_total`); kept here are only the
upstream connection times in Envoy's millisecond buckets and the bytes of the gateway's CONNECT answers;
the connection lengths are the native tunnel durations (`Durations`, which keeps Envoy's bounds too).

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

from ..addresses import host_port
from ..reasons import Reason
from .metrics import Histogram, NativeMetrics, escape_label_value

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


class EnvoyStats:
    """The Envoy view of the native figures, and the few figures only Envoy has (written on the loop)."""

    def __init__(
        self,
        native: NativeMetrics,
        cluster_name: str,
        stat_prefix: str,
        listener_address: str,
        connect_request_bytes: int = 0,
        resolved_at_start: bool = False,
    ) -> None:
        if not set(map(float, ENVOY_BUCKETS_MS)) <= set(native.durations.bounds_ms):
            raise ValueError(
                "the native figures keep no durations in Envoy's buckets: NativeMetrics(ENVOY_BUCKETS_MS)"
            )
        self.native = native
        self.labels = {
            "cluster": f'envoy_cluster_name="{escape_label_value(cluster_name)}"',
            "listener": f'envoy_listener_address="{escape_label_value(listener_address)}"',
            "tcp": f'envoy_tcp_prefix="{escape_label_value(stat_prefix)}"',
        }
        # Each upstream connection made sends one CONNECT request, which Envoy's byte counter includes.
        self.connect_request_bytes = connect_request_bytes
        # Envoy's cluster "resolves" an address literal once at start; our resolver never asks.
        self.update_attempts_at_start = 1 if resolved_at_start else 0
        # Bytes of the gateway's CONNECT answers (of tunnels that reached it), counted at close.
        self.answer_bytes = 0
        self.cluster_upstream_cx_connect_ms = Histogram(ENVOY_BUCKETS_MS)

    def render(self) -> str:
        """The Prometheus text of the 17 names, as Envoy writes it (sorted by name, like Envoy)."""
        native = self.native
        _, listener, cluster = native.durations.views(ENVOY_BUCKETS_MS)
        histograms = {
            "cluster_upstream_cx_connect_ms": self.cluster_upstream_cx_connect_ms.snapshot(),
            "cluster_upstream_cx_length_ms": cluster,
            "listener_downstream_cx_length_ms": listener,
        }
        received, sent = native.received_bytes, native.sent_bytes
        upstream_connections = histograms["cluster_upstream_cx_connect_ms"][0][-1]
        counters = {
            "cluster_bind_errors": 0,
            "cluster_lb_healthy_panic": 0,
            "cluster_update_attempt": self.update_attempts_at_start + native.dns_resolutions,
            "cluster_update_failure": native.dns_failures,
            # A tunnel that found no gateway address; it never connected.
            "cluster_upstream_cx_none_healthy": native.closed.get(Reason.DNS_FAILURE, 0),
            "cluster_upstream_cx_rx_bytes_total": sent + self.answer_bytes,
            "cluster_upstream_cx_tx_bytes_total": received
            + self.connect_request_bytes * upstream_connections,
            "listener_downstream_cx_destroy": histograms["listener_downstream_cx_length_ms"][0][-1],
            # Over the listener's limit or a source's cap.
            "listener_downstream_cx_overflow": sum(native.rejected.copy().values()),
            "listener_downstream_cx_total": native.opened,
            "tcp_downstream_cx_no_route": 0,
            "tcp_downstream_cx_rx_bytes_total": received,
            "tcp_downstream_cx_total": native.opened,
            "tcp_downstream_cx_tx_bytes_total": sent,
        }
        entries: list[tuple[str, str]] = []
        for name, value in counters.items():
            labels = self.labels[name.split("_", 1)[0]]
            entries.append((name, f"# TYPE envoy_{name} counter\nenvoy_{name}{{{labels}}} {int(value)}\n"))
        for name, (cumulative, total) in histograms.items():
            labels = self.labels[name.split("_", 1)[0]]
            lines = [f"# TYPE envoy_{name} histogram"]
            for bound, n in zip((*(_number(b) for b in ENVOY_BUCKETS_MS), "+Inf"), cumulative, strict=True):
                lines.append(f'envoy_{name}_bucket{{{labels},le="{bound}"}} {int(n)}')
            lines.append(f"envoy_{name}_sum{{{labels}}} {_number(total)}")
            lines.append(f"envoy_{name}_count{{{labels}}} {int(cumulative[-1])}")
            entries.append((name, "\n".join(lines) + "\n"))
        return "".join(text for _, text in sorted(entries))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
