"""The load generator watching itself, in each worker: CPU seconds per wall second, time spent runnable
but waiting for a CPU (the kernel's schedstat), and the event loop's lag (how late a 100 ms timer fires).
From these each second is judged: "busy" when the worker's own work was the limit, "starved" when other
processes had the machine's CPUs — either way that second's timings include the generator's own waiting.
The monitor also sends the parent a progress snapshot once a second.
"""

from __future__ import annotations

import asyncio
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .histogram import Histogram
from .scenarios import Context

# How often the loop's lag is sampled.
_TICK = 0.1
# A second is busy at this share of a CPU, or at this much lag while the worker used half a CPU or more
# (one long batch of its own callbacks held the loop).
BUSY_LIMIT = 0.9
LAG_LIMIT_MS = 50.0
# A second is starved when the worker waited this share of it for a CPU while runnable.
WAIT_LIMIT = 0.2
_SCHEDSTAT = Path("/proc/self/schedstat")


def _runqueue_wait() -> float | None:
    """Seconds this process's main thread has spent runnable, waiting for a CPU; None where unknown."""
    try:
        return int(_SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class Monitor:
    def __init__(self, context: Context, pipe: Connection) -> None:
        self.context = context
        self.pipe = pipe
        self.lag = Histogram()
        self.seconds: list[dict[str, float | None]] = []
        self._began = time.monotonic()
        self._cpu_began = time.process_time()
        self._second_began = self._began
        self._second_cpu = self._cpu_began
        self._second_wait = _runqueue_wait()
        self._second_lag = 0.0

    async def run(self) -> None:
        while True:
            due = time.monotonic() + _TICK
            await asyncio.sleep(_TICK)
            now = time.monotonic()
            lag = max(0.0, now - due)
            self.lag.record_seconds(lag)
            self._second_lag = max(self._second_lag, lag)
            if now - self._second_began >= 1.0:
                self._close_second(now)
                self.pipe.send(("progress", self.context.worker, self.snapshot()))

    def _close_second(self, now: float) -> None:
        cpu, wait, wall = time.process_time(), _runqueue_wait(), now - self._second_began
        waited = (
            None if wait is None or self._second_wait is None else round((wait - self._second_wait) / wall, 3)
        )
        self.seconds.append({
            "at_s": round(now - self.context.start, 3),
            "busy": round((cpu - self._second_cpu) / wall, 3),
            "waiting_for_cpu": waited,
            "lag_max_ms": round(self._second_lag * 1e3, 3),
        })  # fmt: skip
        self._second_began, self._second_cpu, self._second_wait, self._second_lag = now, cpu, wait, 0.0

    def snapshot(self) -> dict[str, Any]:
        recorder = self.context.recorder
        tally = recorder.tally
        latency = recorder.phases.get("request" if recorder.unit == "requests" else "total")
        return {"at_s": time.monotonic() - self.context.start, "started": recorder.started, "ok": tally.ok,
                "failed": dict(tally.failed), "in_flight": self.context.in_flight,
                "latency": latency.to_json() if latency else None}  # fmt: skip

    @staticmethod
    def judge(second: dict[str, Any]) -> str | None:
        """ "busy", "starved" or None for one second's figures."""
        busy, lagged = second["busy"], second["lag_max_ms"] >= LAG_LIMIT_MS
        if busy >= BUSY_LIMIT or (lagged and busy >= 0.5):
            return "busy"
        waited = second["waiting_for_cpu"]
        if (waited is not None and waited >= WAIT_LIMIT) or (waited is None and lagged):
            return "starved"
        return None

    def figures(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._second_began >= 0.25:  # the last part-second, if it is long enough to say anything
            self._close_second(now)
        wall, cpu = now - self._began, time.process_time() - self._cpu_began
        judged = [self.judge(second) for second in self.seconds]
        return {
            "worker": self.context.worker,
            "pid": os.getpid(),
            "cpu_s": round(cpu, 4),
            "wall_s": round(wall, 4),
            "busy": round(cpu / wall, 3) if wall else None,
            "busy_seconds": judged.count("busy"),
            "starved_seconds": judged.count("starved"),
            "lag": self.lag.summary_ms(),
            "seconds": self.seconds,
        }
