"""Writes access-log lines to stdout from a thread of its own, so a slow or blocked stdout (a full pipe to
a log shipper) never stalls the event loop. Lines wait in a bounded queue; when it is full the oldest
are dropped and counted, as a log must never cost the data path memory without bound.
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
        self.dropped = 0
        self._lines: collections.deque[str] = collections.deque()
        self._max_queued = max_queued
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, line: str) -> None:
        """Called on the event loop: no I/O, no lock (deque appends are atomic)."""
        lines = self._lines
        if len(lines) >= self._max_queued:
            self.dropped += 1
            return
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
            self._flush()
        self._flush()

    def _flush(self) -> None:
        lines = self._lines
        if not lines:
            return
        chunk = []
        while lines:
            chunk.append(lines.popleft())
        try:
            self.stream.write("".join(chunk))
            self.stream.flush()
        except (OSError, ValueError) as error:  # closed or broken stdout: the proxy goes on
            self.dropped += len(chunk)
            log.debug("access log write failed: %s", error)
        if self.dropped:
            log.warning("access log: %d lines dropped (stdout too slow or closed)", self.dropped)
            self.dropped = 0
