"""The load generator's HDR-style histogram, without sockets: every value lands in a bucket that holds it,
percentiles stay within the stated relative error of the exact ones, merging is exact (the same as one
histogram recording everything), and JSON round-trips it."""

from __future__ import annotations

import json
import math
import random

import pytest

from benchmarks.load.histogram import PRECISION_BITS, Histogram


def _exact(values: list[int], quantile: float) -> int:
    """The nearest-rank percentile of a sorted list, the definition the histogram follows."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(quantile * len(ordered))) - 1]


def _log_uniform(rng: random.Random, count: int, high: float = 1e8) -> list[int]:
    # 1 µs to 100 s: every magnitude a tunnel phase can take.
    return [int(math.exp(rng.uniform(0, math.log(high)))) for _ in range(count)]


def test_every_value_lands_in_a_bucket_that_holds_it_and_buckets_tile_the_range() -> None:
    histogram = Histogram()
    previous_high = -1
    for index in range(0, 40 << (PRECISION_BITS - 1)):
        low, high = histogram.bounds(index)
        assert low == previous_high + 1, index  # no gap, no overlap
        previous_high = high
        for value in {low, high, (low + high) // 2}:
            assert histogram._index(value) == index
    assert previous_high > 10**12


def test_a_bucket_is_at_most_the_stated_fraction_of_its_values_wide() -> None:
    histogram = Histogram()
    for index in range(1 << PRECISION_BITS, 30 << (PRECISION_BITS - 1)):
        low, high = histogram.bounds(index)
        assert (high - low + 1) / low <= 2 ** -(PRECISION_BITS - 1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_are_within_the_relative_error_bound(seed: int) -> None:
    rng = random.Random(seed)
    values = _log_uniform(rng, 20000)
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    for quantile in (0.0, 0.25, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0):
        exact = _exact(values, quantile)
        assert abs(histogram.value_at(quantile) - exact) <= exact * 2**-PRECISION_BITS, quantile
    assert histogram.value_at(1.0) == max(values)
    assert (histogram.min, histogram.max, histogram.count, histogram.sum) == (
        min(values),
        max(values),
        len(values),
        sum(values),
    )


def test_small_values_are_exact() -> None:
    histogram = Histogram()
    for value in (0, 1, 2, 3, 100, 255):
        histogram.record(value)
    assert [histogram.value_at(q) for q in (0.1, 0.3, 0.45, 0.6, 0.8, 1.0)] == [0, 1, 2, 3, 100, 255]


def test_merging_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    parts = [_log_uniform(rng, n) for n in (1000, 1, 0, 5000)]
    merged, whole = Histogram(), Histogram()
    for part in parts:
        piece = Histogram()
        for value in part:
            piece.record(value)
            whole.record(value)
        merged.merge(piece)
    assert merged == whole
    assert merged.summary_ms() == whole.summary_ms()


def test_merging_histograms_of_other_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision bits"):
        Histogram(8).merge(Histogram(7))


def test_json_round_trips_and_is_checked() -> None:
    histogram = Histogram()
    for value in _log_uniform(random.Random(3), 500):
        histogram.record(value)
    data = json.loads(json.dumps(histogram.to_json()))
    assert Histogram.from_json(data) == histogram
    data["count"] += 1
    with pytest.raises(ValueError, match="do not add up"):
        Histogram.from_json(data)


def test_an_empty_histogram_says_nothing_rather_than_zero() -> None:
    summary = Histogram().summary_ms()
    assert summary["count"] == 0
    assert all(value is None for key, value in summary.items() if key != "count")
    assert math.isnan(Histogram().value_at(0.5))


def test_seconds_are_recorded_as_microseconds() -> None:
    histogram = Histogram()
    histogram.record_seconds(0.0123456)
    histogram.record_seconds(-0.001)  # clock noise: counts as 0
    assert (histogram.min, histogram.max) == (0, 12346)
    assert histogram.summary_ms()["max_ms"] == pytest.approx(12.346)
