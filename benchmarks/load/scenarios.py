"""The scenarios as one worker process runs its share of them (see `Plan.share`), on its event loop:

- storm: every tunnel started at once, each held until the last is answered (pods reconnecting);
- rate: open loop, tunnel i started at start + i/R whatever the earlier ones are doing, its `total`
  timed from that scheduled moment: a stall shows in the tail, not as a slower schedule;
- hold: tunnels opened at once, kept, and probed (one request each) every interval;
- requests: tunnels opened at once, then requests on an open-loop schedule, round robin over them, one
  at a time per tunnel (queued behind the one in progress; the wait counts in their latency);
- bulk: tunnels opened at once, then each streams blocks to an echo backend and reads them back.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .plan import Plan
from .record import Recorder
from .tunnel import Conversation, Failure, Stream, describe, exchange, failure_kind, open_tunnel

# Unanswered requests one kept tunnel may have waiting behind the one in progress.
_QUEUE_LIMIT = 1000
# How long closing tunnels may take at the end of a scenario.
_CLOSE_GRACE = 2.0


@dataclass
class Context:
    """One worker's view of the run."""

    plan: Plan
    worker: int
    start: float  # time.monotonic() of the run's start, common to the machine's workers
    recorder: Recorder
    tls: ssl.SSLContext | None
    connect_request: bytes | None
    max_in_flight: int
    in_flight: int = 0

    def at(self, moment: float | None = None) -> float:
        """Seconds since the run's start."""
        return (time.monotonic() if moment is None else moment) - self.start

    def conversation(self) -> Conversation:
        return Conversation(self.plan.target.http_request())

    def mine(self, total: int) -> range:
        return self.plan.share(total, self.worker)

    async def open(self, scheduled: float, *, unit: bool) -> tuple[Stream, Conversation]:
        """Sets up one tunnel scheduled at `scheduled` (monotonic) and records its phases, or its failure
        (then raises it). `unit`: the tunnel is the scenario's unit, so its start is counted."""
        recorder = self.recorder
        began = time.monotonic()
        if unit:
            recorder.start(began - self.start, began - scheduled)
        conversation = self.conversation()
        self.in_flight += 1
        try:
            stream, setup = await open_tunnel(self.plan.target, self.tls, conversation, self.connect_request,
                                              self.plan.timeout)  # fmt: skip
        except Failure as failure:
            recorder.fail("tunnels", failure.kind, failure.phase, str(failure), self.at())
            raise
        except asyncio.CancelledError:
            recorder.cancelled += unit
            raise
        finally:
            self.in_flight -= 1
        at = self.at(setup.answered_at)
        recorder.phase("connect", setup.connect, at)
        if setup.connect_answer is not None:
            recorder.phase("connect_answer", setup.connect_answer, at)
        if setup.tls is not None:
            recorder.phase("tls", setup.tls, at)
        recorder.phase("first_byte", setup.first_byte, at)
        recorder.phase("total", setup.answered_at - scheduled, at)
        recorder.setup_answered(at)
        return stream, conversation


async def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _close(streams: list[Stream]) -> None:
    for stream in streams:
        stream.close()
    if streams:
        await asyncio.wait([stream.closed for stream in streams], timeout=_CLOSE_GRACE)


async def _open_all(
    context: Context, count: int, *, unit: bool, ok_when_open: bool
) -> list[tuple[Stream, Conversation]]:
    """`count` tunnels started at once (at the run's start), the ones that were set up. `ok_when_open`:
    a tunnel counts as ok once set up (else the scenario counts it at its end)."""
    opened: list[tuple[Stream, Conversation]] = []

    async def one() -> None:
        try:
            opened.append(await context.open(context.start, unit=unit))
        except Failure:
            return
        if ok_when_open:
            context.recorder.ok("tunnels", context.at())

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(one())
    except BaseException:
        await _close([stream for stream, _ in opened])
        raise
    return opened


async def storm(context: Context) -> None:
    # Each held until the last one is answered, as reconnecting pods keep theirs.
    opened = await _open_all(
        context, len(context.mine(context.plan.scenario.units())), unit=True, ok_when_open=True
    )
    await _close([stream for stream, _ in opened])


async def rate(context: Context) -> None:
    scenario, recorder = context.plan.scenario, context.recorder

    async def one(scheduled: float) -> None:
        try:
            stream, _ = await context.open(scheduled, unit=True)
        except Failure:
            return
        recorder.ok("tunnels", context.at())
        stream.close()

    async with asyncio.TaskGroup() as group:
        for index in context.mine(scenario.units()):
            scheduled = context.start + index / scenario.rate
            await _sleep_until(scheduled)
            if context.in_flight >= context.max_in_flight:
                # Not started: the generator's socket budget is spent on tunnels still unanswered.
                recorder.fail("tunnels", "in_flight_limit", "schedule",
                              f"{context.in_flight} tunnels in flight in this worker", context.at())  # fmt: skip
                continue
            group.create_task(one(scheduled))


async def hold(context: Context) -> None:
    scenario, recorder = context.plan.scenario, context.recorder
    opened = await _open_all(context, len(context.mine(scenario.units())), unit=True, ok_when_open=False)
    end = context.start + scenario.duration
    # Probes spread evenly over the interval, starting once the tunnels are open.
    base = time.monotonic()
    alive = [True] * len(opened)

    async def probe(index: int) -> None:
        stream, conversation = opened[index]
        moment = base + scenario.probe_interval * index / max(1, len(opened))
        while (moment := moment + scenario.probe_interval) < end:
            await _sleep_until(moment)
            try:
                async with asyncio.timeout(context.plan.timeout):
                    await exchange(stream, conversation)
            except Exception as error:
                kind, detail = failure_kind(error), describe(error)
                recorder.fail("probes", kind, "probe", detail, context.at())
                recorder.fail("tunnels", kind, "probe", detail, context.at())
                alive[index] = False
                stream.close()
                return
            recorder.phase("probe", time.monotonic() - moment, context.at())
            recorder.ok("probes", context.at())

    try:
        async with asyncio.TaskGroup() as group:
            for index in range(len(opened)):
                group.create_task(probe(index))
        await _sleep_until(end)
        for survived in alive:
            if survived:
                recorder.ok("tunnels", context.at())
    finally:
        await _close([stream for stream, _ in opened])


class _Kept:
    """A kept tunnel of the requests scenario and the requests waiting for it; reopened when it breaks."""

    def __init__(self, context: Context, opened: tuple[Stream, Conversation] | None) -> None:
        self.context = context
        self.opened = opened
        self.queue: collections.deque[float] = collections.deque()
        self.finished = False
        self._wake = asyncio.Event()

    def add(self, scheduled: float) -> bool:
        if len(self.queue) >= _QUEUE_LIMIT:
            return False
        self.queue.append(scheduled)
        self._wake.set()
        return True

    def finish(self) -> None:
        self.finished = True
        self._wake.set()

    async def serve(self) -> None:
        context, recorder = self.context, self.context.recorder
        while True:
            while not self.queue:
                if self.finished:
                    return
                self._wake.clear()
                await self._wake.wait()
            scheduled = self.queue.popleft()
            began = time.monotonic()
            recorder.start(began - context.start, began - scheduled)
            if began - scheduled > context.plan.timeout:
                # Waited behind slower answers for longer than a request may take: not sent at all.
                recorder.fail("requests", "timeout", "queue", f"waited {began - scheduled:.3f} s for its tunnel",
                              context.at(began))  # fmt: skip
                continue
            try:
                if self.opened is None:
                    self.opened = await context.open(began, unit=False)
                else:
                    async with asyncio.timeout(context.plan.timeout):
                        await exchange(*self.opened)
            except Exception as error:
                phase = error.phase if isinstance(error, Failure) else "request"
                recorder.fail("requests", failure_kind(error), phase, describe(error),
                              context.at())  # fmt: skip
                if self.opened is not None:
                    self.opened[0].close()
                    self.opened = None
                continue
            done = time.monotonic()
            recorder.phase("request", done - scheduled, context.at(done))
            recorder.ok("requests", context.at(done))


async def requests(context: Context) -> None:
    scenario, recorder = context.plan.scenario, context.recorder
    opened = await _open_all(context, len(context.mine(scenario.connections)), unit=False, ok_when_open=True)
    count = len(context.mine(scenario.connections))
    kept = [_Kept(context, opened[i] if i < len(opened) else None) for i in range(count)]
    # The request schedule starts once this worker's tunnels are open.
    origin = time.monotonic()
    try:
        async with asyncio.TaskGroup() as group:
            for one in kept:
                group.create_task(one.serve())
            for number, index in enumerate(context.mine(scenario.units())):
                scheduled = origin + index / scenario.rate
                await _sleep_until(scheduled)
                if not kept[number % len(kept)].add(scheduled):
                    recorder.fail("requests", "in_flight_limit", "schedule",
                                  f"{_QUEUE_LIMIT} requests already wait for this tunnel", context.at())  # fmt: skip
            for one in kept:
                one.finish()
    finally:
        await _close([one.opened[0] for one in kept if one.opened is not None])


async def bulk(context: Context) -> None:
    scenario, recorder = context.plan.scenario, context.recorder
    opened = await _open_all(context, len(context.mine(scenario.connections)), unit=True, ok_when_open=False)
    end = context.start + scenario.duration
    block = b"\x00" * scenario.block_size
    window = 16 * scenario.block_size

    async def pump(stream: Stream) -> None:
        sent = received = 0
        try:
            while True:
                sending = time.monotonic() < end
                while sending and sent - received < window:
                    stream.write(block)
                    sent += len(block)
                    recorder.bytes_sent += len(block)
                if not sending and received >= sent:
                    break
                await stream.drain()
                async with asyncio.timeout(context.plan.timeout):
                    data = await stream.read()
                received += len(data)
                recorder.received(len(data), context.at())
        except Exception as error:
            recorder.fail("tunnels", failure_kind(error), "bulk", describe(error),
                          context.at())  # fmt: skip
            return
        recorder.ok("tunnels", context.at())

    try:
        async with asyncio.TaskGroup() as group:
            for stream, _ in opened:
                group.create_task(pump(stream))
    finally:
        await _close([stream for stream, _ in opened])


SCENARIOS: dict[str, Callable[[Context], Coroutine[Any, Any, None]]] = {
    "storm": storm,
    "rate": rate,
    "hold": hold,
    "requests": requests,
    "bulk": bulk,
}
