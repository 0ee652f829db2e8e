"""apiproxy_handovers_total{role, result}: what became of each handover this process took part in, as a
Collector of the native metrics' registry (plain counts, turned into a family only when scraped)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import Record

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry


class HandoverCounts:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def record(self, role: str, result: str) -> None:
        self.counts[role, result] = self.counts.get((role, result), 0) + 1

    def collect(self) -> Iterator[Any]:
        # Imported here, by then apiproxy.monitoring.metrics has made prometheus-client's core importable
        # without the package's HTTP servers (see its _import_core).
        from prometheus_client.metrics_core import CounterMetricFamily

        family = CounterMetricFamily(
            "apiproxy_handovers",
            "Listener handovers this process took part in, by role (taker: it asked at start; giver: it was "
            "asked) and result (taken/given, none: no process to take from, declined, unconfirmed, failed).",
            labels=["role", "result"],
        )
        for labels, count in self.counts.copy().items():
            family.add_metric(list(labels), count)
        yield family


def handover_counter(registry: CollectorRegistry) -> Record:
    counts = HandoverCounts()
    registry.register(counts)  # a Collector: it has collect()
    return counts.record
