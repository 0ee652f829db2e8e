"""A latency histogram in the manner of HdrHistogram: log-linear buckets of integer microseconds, so every
recorded value is kept (no sample cap), any percentile is within a known relative error, two histograms
merge exactly by adding counts, and the whole thing is a small JSON object.

Bucketing with P precision bits: values below 2**P have a bucket each (exact); above, a value keeps its
top P bits, so a bucket spans at most 1/2**(P-1) of its lower bound and the bucket's midpoint is within
1/2**P of any value in it (P = 8: 0.39 %). Min, max, count and sum are kept exactly besides.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

PRECISION_BITS = 8
# The quantiles every report shows, with their JSON names.
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))


class Histogram:
    __slots__ = ("_bits", "count", "counts", "max", "min", "sum")

    def __init__(self, precision_bits: int = PRECISION_BITS) -> None:
        if not 2 <= precision_bits <= 16:
            raise ValueError(f"precision_bits must be between 2 and 16, got {precision_bits}")
        self._bits = precision_bits
        self.counts: dict[int, int] = {}
        self.count = 0
        self.sum = 0
        self.min = 0
        self.max = 0

    @property
    def precision_bits(self) -> int:
        return self._bits

    def _index(self, value: int) -> int:
        shift = value.bit_length() - self._bits
        if shift <= 0:
            return value
        return (shift << (self._bits - 1)) + (value >> shift)

    def bounds(self, index: int) -> tuple[int, int]:
        """The smallest and largest value a bucket holds."""
        if index < 1 << self._bits:
            return index, index
        half = 1 << (self._bits - 1)
        shift = index // half - 1
        top = index - shift * half
        return top << shift, ((top + 1) << shift) - 1

    def record(self, value: int) -> None:
        """One value in microseconds (negative values, from clock noise, count as 0)."""
        value = max(0, value)
        index = self._index(value)
        self.counts[index] = self.counts.get(index, 0) + 1
        if self.count == 0 or value < self.min:
            self.min = value
        self.max = max(self.max, value)
        self.count += 1
        self.sum += value

    def record_seconds(self, seconds: float) -> None:
        self.record(round(seconds * 1e6))

    def merge(self, other: Histogram) -> None:
        """Adds `other`'s counts: the result is what one histogram recording both would hold."""
        if other._bits != self._bits:
            raise ValueError(f"cannot merge histograms of {other._bits} and {self._bits} precision bits")
        if other.count == 0:
            return
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.sum += other.sum

    def value_at(self, quantile: float) -> float:
        """The value (µs) at `quantile` (0-1), nearest rank: the midpoint of the bucket holding that rank,
        clamped to the exact min and max. NaN when empty."""
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(quantile * self.count))
        if rank >= self.count:
            return float(self.max)
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                low, high = self.bounds(index)
                return min(max((low + high) / 2, self.min), self.max)
        return float(self.max)

    def cumulative(self) -> Iterator[tuple[float, float]]:
        """(bucket midpoint µs, fraction of values at or below it), ascending: a percentile curve."""
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            low, high = self.bounds(index)
            yield min(max((low + high) / 2, self.min), self.max), seen / self.count

    def summary_ms(self) -> dict[str, float | int | None]:
        """count, p50/p90/p99/p99.9, min, max and mean in milliseconds (None when nothing was recorded)."""
        figures: dict[str, float | int | None] = {"count": self.count}
        empty = self.count == 0
        for name, quantile in QUANTILES:
            figures[f"{name}_ms"] = None if empty else self.value_at(quantile) / 1e3
        figures["min_ms"] = None if empty else self.min / 1e3
        figures["max_ms"] = None if empty else self.max / 1e3
        figures["mean_ms"] = None if empty else self.sum / self.count / 1e3
        return figures

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": "us",
            "precision_bits": self._bits,
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "sum": self.sum,
            # [bucket index, count] pairs, ascending; Histogram.bounds(index) gives a bucket's values.
            "buckets": [[index, self.counts[index]] for index in sorted(self.counts)],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        histogram = cls(int(data["precision_bits"]))
        histogram.counts = {int(index): int(count) for index, count in data["buckets"]}
        histogram.count = int(data["count"])
        histogram.min, histogram.max, histogram.sum = int(data["min"]), int(data["max"]), int(data["sum"])
        if sum(histogram.counts.values()) != histogram.count:
            raise ValueError("histogram buckets do not add up to its count")
        return histogram

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]
