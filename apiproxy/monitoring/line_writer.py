"""Writes access-log lines to stdout from a thread of its own, so a slow or blocked stdout (a full pipe to
a log shipper) never stalls the event loop. Lines wait in a bounded queue; when it is full the oldest are
dropped (the newest say more about now) and counted, as a log must never cost the data path memory
without bound.

Each count has one writer thread: `queue_dropped` the event loop's, `write_failed` and `reported` the
writer thread's, so no count is lost to a race between the two.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import TextIO

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.1  # s: how long a line may wait before it is written
MAX_QUEUED = 100_000


class LineWriter:
    def __init__(self, stream: TextIO, max_queued: int = MAX_QUEUED) -> None:
        self.stream = stream
        # A full deque drops its oldest line as a new one is appended.
        self._lines: collections.deque[str] = collections.deque(maxlen=max_queued)
        self.queue_dropped = 0  # lines pushed out of the full queue (event loop)
        self.write_failed = 0  # lines stdout refused (writer thread)
        self.reported = 0  # drops already logged (writer thread)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        return self.queue_dropped + self.write_failed

    def write(self, line: str) -> None:
        """Called on the event loop: no I/O, no lock (deque appends are atomic)."""
        lines = self._lines
        if len(lines) == lines.maxlen:
            self.queue_dropped += 1
        lines.append(line)

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
        lines = self._lines
        chunk = []
        while lines:
            try:
                chunk.append(lines.popleft())
            except IndexError:  # emptied meanwhile: cannot happen with one reader, but never raise here
                break
        if chunk:
            try:
                self.stream.write("".join(chunk))
                self.stream.flush()
            except (OSError, ValueError) as error:  # closed or broken stdout: the proxy goes on
                self.write_failed += len(chunk)
                log.debug("access log write failed: %s", error)
        dropped = self.dropped
        if dropped > self.reported:
            log.warning("access log: %d lines dropped (stdout too slow or closed)", dropped - self.reported)
            self.reported = dropped
