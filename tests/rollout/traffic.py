"""The traffic of a rolling-update test, on a loop thread of its own: a steady open-loop stream of short
tunnels (connect, one request, its echo, close) and a few long streaming tunnels whose every byte is
checked. Each short tunnel's outcome is kept with its start time and client address, which is unique: it
comes from an address of its own in 127.0.0.0/8 (ports alone wrap around in a minute of this), so the
access log line that names it says which process served it.

Outcomes: ok; refused (connection refused); reset (reset or broken pipe at any point); failed (anything
else: closed before the whole echo, wrong bytes, a timeout). Bounded: the stream stops at `stop()` or
after MAX_SECONDS, and never has more than MAX_IN_FLIGHT tunnels open.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from lab.loop_thread import LoopThread

MAX_SECONDS = 30.0
MAX_IN_FLIGHT = 500
TIMEOUT = 5.0
REQUEST = 256


@dataclass
class Short:
    started: float  # time.monotonic()
    client: (
        str  # "127.a.b.c:port" as the access log writes DOWNSTREAM_REMOTE_ADDRESS; no port if never connected
    )
    outcome: str = "pending"
    detail: str = ""


@dataclass
class Long:
    sent: int = 0
    received: int = 0
    intact: bool = True  # every byte received so far is the byte sent at that position
    ended: float | None = None
    end: str = ""  # "eof" or "reset"


@dataclass
class Traffic:
    """`rate` new short tunnels a second and `long_tunnels` long ones to 127.0.0.1:`port`."""

    port: int
    rate: float = 200.0
    long_tunnels: int = 3
    shorts: list[Short] = field(default_factory=list)
    longs: list[Long] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._thread = LoopThread("rollout-traffic")
        self._stopping = False
        self._done: asyncio.Future[None] | None = None

    def start(self) -> Traffic:
        async def begin() -> None:
            self._done = asyncio.ensure_future(self._run())

        self._thread.run(begin())
        return self

    def stop(self) -> None:
        """Stop starting tunnels, wait for those in flight, close the long ones; then the figures are final."""
        self._stopping = True

        async def finish() -> None:
            assert self._done is not None
            await self._done

        try:
            self._thread.run(finish(), timeout=TIMEOUT * 3)
        finally:
            self._thread.stop()

    def counts(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        """Outcomes of the short tunnels started in [since, until)."""
        return Counter(s.outcome for s in self.shorts if since <= s.started < until)

    def clients(self, outcome: str = "ok", since: float = 0.0) -> set[str]:
        return {s.client for s in self.shorts if s.outcome == outcome and s.started >= since}

    async def _run(self) -> None:
        longs = [asyncio.ensure_future(self._long(index)) for index in range(self.long_tunnels)]
        shorts: set[asyncio.Task[None]] = set()
        begun = time.monotonic()
        interval = 1.0 / self.rate
        due = begun
        while not self._stopping and time.monotonic() - begun < MAX_SECONDS:
            now = time.monotonic()
            if now < due:
                await asyncio.sleep(due - now)
                continue
            due += interval
            if len(shorts) >= MAX_IN_FLIGHT:
                continue
            number = len(self.shorts) + 1
            record = Short(
                time.monotonic(), f"127.{1 + (number >> 16) % 254}.{(number >> 8) & 255}.{number & 255}"
            )
            self.shorts.append(record)
            task = asyncio.ensure_future(self._short(record))
            shorts.add(task)
            task.add_done_callback(shorts.discard)
        if shorts:
            await asyncio.wait(shorts, timeout=TIMEOUT * 2)
        for task in longs:
            task.cancel()
        await asyncio.gather(*longs, return_exceptions=True)

    async def _short(self, record: Short) -> None:
        request = f"{len(self.shorts):08d}".encode().ljust(REQUEST, b".")
        writer = None
        try:
            async with asyncio.timeout(TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(record.client, 0)
                )
                record.client += f":{writer.get_extra_info('sockname')[1]}"
                writer.write(request)
                echo = await reader.readexactly(len(request))
            record.outcome, record.detail = ("ok", "") if echo == request else ("failed", "other bytes")
        except ConnectionRefusedError:
            record.outcome = "refused"
        except (ConnectionResetError, BrokenPipeError) as error:
            record.outcome, record.detail = "reset", str(error)
        except asyncio.IncompleteReadError as error:
            record.outcome, record.detail = "failed", f"closed after {len(error.partial)} of {REQUEST} bytes"
        except TimeoutError:
            record.outcome, record.detail = "failed", f"no echo within {TIMEOUT:g}s"
        except OSError as error:
            record.outcome, record.detail = "failed", str(error)
        finally:
            if writer is not None:
                writer.close()

    async def _long(self, index: int) -> None:
        """Writes 4 KiB every 20 ms and checks every byte that comes back, until the tunnel ends or stop()."""
        state = Long()
        self.longs.append(state)
        generator = random.Random(index)
        sent = bytearray()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as error:
            state.intact, state.end, state.ended = False, f"could not connect: {error}", time.monotonic()
            return

        async def write() -> None:
            while True:
                chunk = generator.randbytes(4096)
                sent.extend(chunk)
                writer.write(chunk)
                state.sent += len(chunk)
                await writer.drain()
                await asyncio.sleep(0.02)

        writing = asyncio.ensure_future(write())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    state.end = "eof"
                    break
                if bytes(sent[state.received : state.received + len(data)]) != data:
                    state.intact = False
                state.received += len(data)
        except (ConnectionResetError, BrokenPipeError):
            state.end = "reset"
        finally:
            if not state.ended:
                state.ended = time.monotonic()
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
            writer.close()
