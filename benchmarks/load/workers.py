"""Worker processes: each runs its share of the scenario on an event loop of its own (uvloop when it is
installed) with a `Monitor` watching it, so the report can tell when the load generator, not the target,
was the limit. The parent starts them (fork, all at one
common start time), prints progress on stderr about once a second, forwards Ctrl-C, and merges their
recorders exactly. Every worker is ended by its PID if it overruns the scenario's time bound.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any, cast

from .histogram import Histogram
from .monitor import Monitor
from .plan import Plan
from .record import Recorder
from .scenarios import SCENARIOS, Context

# Workers start together a moment after the parent forks them.
_START_DELAY = 0.3


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop  # type: ignore[no-any-return,unused-ignore]


async def _worker(
    plan: Plan, worker: int, start: float, max_in_flight: int, pipe: Connection
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    recorder = Recorder(plan.scenario.unit)
    context = Context(plan, worker, start, recorder, plan.target.tls_context(), plan.target.connect_request(),
                      max_in_flight)  # fmt: skip
    interrupted = False
    scenario: asyncio.Task[None] | None = None

    def stop() -> None:
        nonlocal interrupted
        interrupted = True
        if scenario is not None:
            scenario.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    delay = start - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    monitor = Monitor(context, pipe)
    watching = asyncio.create_task(monitor.run())
    if not interrupted:
        scenario = asyncio.create_task(SCENARIOS[plan.scenario.kind](context))
        try:
            await scenario
        except asyncio.CancelledError:
            if not interrupted:
                raise
    watching.cancel()
    return {"recorder": recorder.to_json(), "monitor": monitor.figures(), "interrupted": interrupted}


def _worker_main(plan: Plan, worker: int, start: float, max_in_flight: int, pipe: Connection) -> None:
    # Ctrl-C reaches every process of the terminal's group: ignored until the loop handles it (gracefully).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        coroutine: Coroutine[Any, Any, dict[str, Any]] = _worker(plan, worker, start, max_in_flight, pipe)
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            result = runner.run(coroutine)
        pipe.send(("result", worker, result))
    except BaseException as error:  # reported by the parent, then the run ends with what the others did
        pipe.send(("error", worker, f"{type(error).__name__}: {error}", traceback.format_exc()))
    finally:
        pipe.close()


@dataclass
class Outcome:
    recorder: Recorder
    monitors: list[dict[str, Any]]
    interrupted: bool
    started_at: float  # time.time() at the start
    seconds: float  # from the start to the last worker's end
    errors: list[str] = field(default_factory=list)


class _Progress:
    """The workers' latest snapshots, summed into one line."""

    def __init__(self, plan: Plan, start: float) -> None:
        self.plan = plan
        self.start = start
        self.snapshots: dict[int, dict[str, Any]] = {}

    def line(self) -> str:
        snapshots = self.snapshots.values()
        elapsed = min(s["at_s"] for s in snapshots)
        started = sum(s["started"] for s in snapshots)
        ok = sum(s["ok"] for s in snapshots)
        failed: Counter[str] = Counter()
        latency = Histogram()
        for snapshot in snapshots:
            failed.update(snapshot["failed"])
            if snapshot["latency"]:
                latency.merge(Histogram.from_json(snapshot["latency"]))
        scenario = self.plan.scenario
        unit = scenario.unit
        parts = [f"{scenario.kind} {elapsed:.0f} s: started {started:,} {unit}"]
        if scenario.kind in ("rate", "requests") and elapsed > 0:
            asked = scenario.rate / self.plan.shard.count
            parts.append(f"{started / elapsed:,.1f}/s (asked {asked:,.1f}/s)")
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in failed.most_common(3))
        parts.append(f"ok {ok:,}, failed {sum(failed.values()):,}" + (f" ({kinds})" if kinds else ""))
        parts.append(f"in flight {sum(s['in_flight'] for s in snapshots):,}")
        if latency.count:
            parts.append(f"p99 {latency.value_at(0.99) / 1e3:,.1f} ms")
        return ", ".join(parts)


def time_bound(plan: Plan) -> float:
    """The most a run may take after its start before workers are ended: the scenario's duration, then
    up to three timeouts (setup, a request waiting its turn, closing) and some slack."""
    return plan.scenario.duration + 3 * plan.timeout + 15.0


def run(plan: Plan, max_in_flight: int, say: Callable[[str], None]) -> Outcome:
    context = multiprocessing.get_context("fork")
    start = time.monotonic() + _START_DELAY + 0.01 * plan.workers
    started_at = time.time() + (start - time.monotonic())
    receivers: dict[Connection, int] = {}
    processes: list[Any] = []
    for worker in range(plan.workers):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_worker_main, args=(plan, worker, start, max_in_flight, sender),
                                  name=f"load-worker-{worker}", daemon=True)  # fmt: skip
        process.start()
        sender.close()
        receivers[receiver] = worker
        processes.append(process)

    interrupts = 0

    def interrupt(signum: int, _: FrameType | None) -> None:
        nonlocal interrupts
        interrupts += 1
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGKILL if interrupts > 1 else signal.SIGINT)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    progress = _Progress(plan, start)
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    deadline = start + time_bound(plan)
    next_line = start + 1.0
    try:
        while receivers:
            now = time.monotonic()
            if now > deadline:
                for worker in receivers.values():
                    errors.append(
                        f"worker {worker} overran the time bound ({time_bound(plan):.0f} s) and was killed"
                    )
                    _kill(processes[worker])
                break
            for ready in wait(list(receivers), timeout=max(0.0, min(next_line, deadline) - now)):
                receiver = cast(Connection, ready)
                worker = receivers[receiver]
                try:
                    message = receiver.recv()
                except EOFError:
                    del receivers[receiver]
                    if worker not in results and not any(e.startswith(f"worker {worker} ") for e in errors):
                        errors.append(f"worker {worker} ended without a result (killed?)")
                    continue
                if message[0] == "progress":
                    progress.snapshots[worker] = message[2]
                elif message[0] == "result":
                    results[worker] = message[2]
                else:
                    errors.append(f"worker {worker} failed: {message[2]}")
                    say(message[3].rstrip())
            if time.monotonic() >= next_line and receivers and progress.snapshots:
                say(progress.line())
                next_line += math.floor(time.monotonic() - next_line) + 1.0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for process in processes:
            process.join(5)
            if process.exitcode is None:
                _kill(process)
    seconds = time.monotonic() - start
    recorder = Recorder(plan.scenario.unit)
    for worker in sorted(results):
        recorder.merge(Recorder.from_json(results[worker]["recorder"]))
    return Outcome(
        recorder=recorder,
        monitors=[results[w]["monitor"] for w in sorted(results)],
        interrupted=interrupts > 0 or any(r["interrupted"] for r in results.values()),
        started_at=started_at,
        seconds=seconds,
        errors=errors,
    )


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    if process.pid is not None and process.exitcode is None:
        os.kill(process.pid, signal.SIGKILL)
        process.join(5)
