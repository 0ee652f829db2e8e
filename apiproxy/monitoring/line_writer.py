"""Writes access-log lines to stdout from a thread of its own, so a slow or blocked stdout (a full pipe to
a log shipper) never stalls the event loop. The loop hands over records (tuples: cheap to build); the
thread turns each batch of them into lines in one call (`render`, see `access_log`) and writes them in one
more. Records wait in a bounded
queue; when it is full the oldest are dropped (the newest say more about now) and counted, as a log must
never cost the data path memory without bound.

Each count has one writer thread: `queue_dropped` the event loop's, `write_failed` and `reported` the
writer thread's, so no count is lost to a race between the two.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any, TextIO

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.1  # s: how long a line may wait before it is written
# Records waiting at most: an access-log record with the addresses it keeps alive is ~370 bytes, so a
# blocked stdout holds ~15 MiB, as 100,000 formatted lines did (measured with tracemalloc); at 3,000
# tunnels/s that is 13 s of lines.
MAX_QUEUED = 40_000


class LineWriter:
    def __init__(
        self, stream: TextIO, render: Callable[[list[Any]], str] = "".join, max_queued: int = MAX_QUEUED
    ) -> None:
        self.stream = stream
        self.render = render  # a batch of records -> their lines, on the writer thread (default: lines)
        # A full deque drops its oldest record as a new one is appended.
        self._records: collections.deque[Any] = collections.deque(maxlen=max_queued)
        self.queue_dropped = 0  # records pushed out of the full queue (event loop)
        self.write_failed = 0  # lines stdout refused, or that could not be written (writer thread)
        self.reported = 0  # drops already logged (writer thread)
        self._render_failed = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        return self.queue_dropped + self.write_failed

    def write(self, record: Any) -> None:
        """Called on the event loop: no I/O, no lock (deque appends are atomic)."""
        records = self._records
        if len(records) == records.maxlen:
            self.queue_dropped += 1
        records.append(record)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="apiproxy-access-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(FLUSH_INTERVAL):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Write what is queued (on the writer thread; tests call it directly)."""
        records = self._records
        batch = []
        while records:
            try:
                batch.append(records.popleft())
            except IndexError:  # emptied meanwhile: cannot happen with one reader, but never raise here
                break
        if batch:
            try:
                text = self.render(batch)
            except Exception:  # a bug in a format: the lines are lost, the proxy goes on, and it is said once
                self.write_failed += len(batch)
                if not self._render_failed:
                    self._render_failed = True
                    log.exception("access log: a line could not be written")
            else:
                try:
                    self.stream.write(text)
                    self.stream.flush()
                except (OSError, ValueError) as error:  # closed or broken stdout: the proxy goes on
                    self.write_failed += len(batch)
                    log.debug("access log write failed: %s", error)
        dropped = self.dropped
        if dropped > self.reported:
            log.warning("access log: %d lines dropped (stdout too slow or closed)", dropped - self.reported)
            self.reported = dropped
