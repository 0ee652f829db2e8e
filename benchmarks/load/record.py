"""What a run records: a histogram per phase, the same per second, and tallies of successes and failures
(by kind and by the phase they happened in) for tunnels, requests and probes. One `Recorder` per worker;
recorders of workers and of shards merge exactly, and round-trip through JSON for `load merge`.

Times are seconds since the run's start (a monotonic clock the workers of one machine share). A unit's
figures go to the second it completed in; `started` counts go to the second it started in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .histogram import Histogram

# The phases of a tunnel's setup, in order; `total` runs from the tunnel's scheduled start to its answer's
# first byte (so a generator or target that falls behind shows here, not in a slower schedule).
SETUP_PHASES = ("connect", "connect_answer", "tls", "first_byte", "total")
# `request` (requests: scheduled send to complete answer), `probe` (hold: scheduled probe to complete
# answer), `schedule_lag` (how late the generator started units against their schedule).
OTHER_PHASES = ("request", "probe", "schedule_lag")
TALLIES = ("tunnels", "requests", "probes")


@dataclass
class Tally:
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    failed_phases: Counter[str] = field(default_factory=Counter)
    # The earliest failure: kind, phase, what the system said, and when (s).
    first_failure: dict[str, Any] | None = None

    def fail(self, kind: str, phase: str, detail: str, at: float) -> None:
        self.failed[kind] += 1
        self.failed_phases[phase] += 1
        if self.first_failure is None or at < self.first_failure["at_s"]:
            self.first_failure = {"kind": kind, "phase": phase, "detail": detail, "at_s": round(at, 6)}

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def merge(self, other: Tally) -> None:
        self.ok += other.ok
        self.failed.update(other.failed)
        self.failed_phases.update(other.failed_phases)
        if other.first_failure is not None and (
            self.first_failure is None or other.first_failure["at_s"] < self.first_failure["at_s"]
        ):
            self.first_failure = dict(other.first_failure)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": dict(self.failed.most_common()),
            "failed_total": self.failed_total,
            "failed_phases": dict(self.failed_phases.most_common()),
            "first_failure": self.first_failure,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        return cls(
            int(data["ok"]), Counter(data["failed"]), Counter(data["failed_phases"]), data["first_failure"]
        )


@dataclass
class Second:
    started: int = 0
    ok: int = 0
    failed: int = 0
    bytes_received: int = 0
    phases: dict[str, Histogram] = field(default_factory=dict)

    def merge(self, other: Second) -> None:
        self.started += other.started
        self.ok += other.ok
        self.failed += other.failed
        self.bytes_received += other.bytes_received
        _merge_phases(self.phases, other.phases)


def _merge_phases(into: dict[str, Histogram], other: dict[str, Histogram]) -> None:
    for name, histogram in other.items():
        into.setdefault(name, Histogram(histogram.precision_bits)).merge(histogram)


def _span_min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _span_max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


class Recorder:
    def __init__(self, unit: str = "tunnels") -> None:
        if unit not in TALLIES:
            raise ValueError(f"unknown unit {unit!r}")
        self.unit = unit
        self.phases: dict[str, Histogram] = {}
        self.seconds: dict[int, Second] = {}
        self.tallies = {name: Tally() for name in TALLIES}
        self.started = 0
        # Tunnels or requests cut off by Ctrl-C: neither ok nor failed.
        self.cancelled = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        # When the first and the last unit started, and when the last tunnel's setup was answered (s).
        self.first_start: float | None = None
        self.last_start: float | None = None
        self.last_setup_answer: float | None = None

    def second(self, at: float) -> Second:
        index = max(0, int(at))
        found = self.seconds.get(index)
        if found is None:
            found = self.seconds[index] = Second()
        return found

    def start(self, at: float, lag: float) -> None:
        """A unit (tunnel or request) started at `at`, `lag` seconds after its scheduled time."""
        self.started += 1
        self.first_start = _span_min(self.first_start, at)
        self.last_start = _span_max(self.last_start, at)
        self.second(at).started += 1
        self.phase("schedule_lag", lag, at)

    def phase(self, name: str, seconds: float, at: float) -> None:
        """A phase's duration, completed at `at`: into the run's histogram and the second's."""
        micros = round(seconds * 1e6)
        histogram = self.phases.get(name)
        if histogram is None:
            histogram = self.phases[name] = Histogram()
        histogram.record(micros)
        per_second = self.second(at).phases
        histogram = per_second.get(name)
        if histogram is None:
            histogram = per_second[name] = Histogram()
        histogram.record(micros)

    def ok(self, tally: str, at: float) -> None:
        self.tallies[tally].ok += 1
        if tally == self.unit:
            self.second(at).ok += 1

    def fail(self, tally: str, kind: str, phase: str, detail: str, at: float) -> None:
        self.tallies[tally].fail(kind, phase, detail, at)
        if tally == self.unit:
            self.second(at).failed += 1

    def received(self, count: int, at: float) -> None:
        self.bytes_received += count
        self.second(at).bytes_received += count

    def setup_answered(self, at: float) -> None:
        self.last_setup_answer = _span_max(self.last_setup_answer, at)

    @property
    def tally(self) -> Tally:
        """The tally of the scenario's unit: what `ok` and `failed` in the report count."""
        return self.tallies[self.unit]

    def merge(self, other: Recorder) -> None:
        """Adds another worker's recorder (same clock: spans are combined, not added)."""
        if other.unit != self.unit:
            raise ValueError(f"cannot merge a recorder of {other.unit} into one of {self.unit}")
        _merge_phases(self.phases, other.phases)
        for index, second in other.seconds.items():
            self.seconds.setdefault(index, Second()).merge(second)
        for name, tally in other.tallies.items():
            self.tallies[name].merge(tally)
        self.started += other.started
        self.cancelled += other.cancelled
        self.bytes_sent += other.bytes_sent
        self.bytes_received += other.bytes_received
        self.first_start = _span_min(self.first_start, other.first_start)
        self.last_start = _span_max(self.last_start, other.last_start)
        self.last_setup_answer = _span_max(self.last_setup_answer, other.last_setup_answer)

    def span(self) -> dict[str, float | None]:
        return {"first_start_s": self.first_start, "last_start_s": self.last_start,
                "last_setup_answer_s": self.last_setup_answer}  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """Everything recorded, percentiles included, in the shape results.json carries."""
        return {
            "unit": self.unit,
            **self.tally.to_json(),
            "started": self.started,
            "cancelled": self.cancelled,
            "tallies": {name: tally.to_json() for name, tally in self.tallies.items()},
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "span": self.span(),
            "phases": {name: _phase_json(self.phases[name]) for name in _ordered(self.phases)},
            "per_second": [
                {
                    "second": index,
                    "started": second.started,
                    "ok": second.ok,
                    "failed": second.failed,
                    "bytes_received": second.bytes_received,
                    "phases": {name: _phase_json(second.phases[name]) for name in _ordered(second.phases)},
                }
                for index, second in sorted(self.seconds.items())
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recorder:
        recorder = cls(data["unit"])
        recorder.phases = {
            name: Histogram.from_json(phase["histogram"]) for name, phase in data["phases"].items()
        }
        for entry in data["per_second"]:
            recorder.seconds[int(entry["second"])] = Second(
                int(entry["started"]), int(entry["ok"]), int(entry["failed"]), int(entry["bytes_received"]),
                {name: Histogram.from_json(phase["histogram"]) for name, phase in entry["phases"].items()},
            )  # fmt: skip
        recorder.tallies = {name: Tally.from_json(tally) for name, tally in data["tallies"].items()}
        recorder.started = int(data["started"])
        recorder.cancelled = int(data["cancelled"])
        recorder.bytes_sent = int(data["bytes_sent"])
        recorder.bytes_received = int(data["bytes_received"])
        # results.json keeps the span per shard (each shard has a clock of its own), not at the top.
        span = data.get("span") or {}
        recorder.first_start, recorder.last_start = span.get("first_start_s"), span.get("last_start_s")
        recorder.last_setup_answer = span.get("last_setup_answer_s")
        return recorder


def _ordered(phases: dict[str, Histogram]) -> list[str]:
    known = [name for name in (*SETUP_PHASES, *OTHER_PHASES) if name in phases]
    return known + sorted(set(phases) - set(known))


def _phase_json(histogram: Histogram) -> dict[str, Any]:
    return {**histogram.summary_ms(), "histogram": histogram.to_json()}
