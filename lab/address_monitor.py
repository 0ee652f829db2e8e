"""Timestamps of an address's deletions and additions in a network namespace, from `ip -ts monitor
address`: how the VIP repair time is measured (tests/vip and the benchmarks), from the kernel's own
notifications rather than from polling.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from datetime import datetime

_LINE = re.compile(
    r"^\[(?P<ts>[^\]]+)\] (?P<deleted>Deleted )?\d+: (?P<link>\S+)\s+inet6? (?P<address>[^/ ]+)/"
)
# Added and deleted on `lo` until `ip monitor` reports it: the monitor subscribes some time after it starts.
_MARKER = "10.201.0.1"


def _ip(namespace: str, *args: str) -> None:
    subprocess.run(["ip", "-n", namespace, *args], check=True, capture_output=True, timeout=30)


class AddressMonitor:
    def __init__(self, namespace: str, address: str) -> None:
        self.address = address
        self.process = subprocess.Popen(["ip", "-n", namespace, "-ts", "monitor", "address"],
                                        stdout=subprocess.PIPE, text=True)  # fmt: skip
        # (time, deleted?, link) of each notification about `address`
        self.events: list[tuple[datetime, bool, str]] = []
        self._subscribed = threading.Event()
        threading.Thread(target=self._read, name="ip-monitor", daemon=True).start()
        deadline = time.monotonic() + 10
        while not self._subscribed.is_set() and time.monotonic() < deadline:
            _ip(namespace, "addr", "add", f"{_MARKER}/32", "dev", "lo")
            _ip(namespace, "addr", "del", f"{_MARKER}/32", "dev", "lo")
            self._subscribed.wait(0.05)
        if not self._subscribed.is_set():
            self.stop()
            raise RuntimeError("ip monitor reported nothing within 10 s")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = _LINE.match(line)
            if match is None:
                continue
            if match["address"] == _MARKER:
                self._subscribed.set()
            elif match["address"] == self.address:
                self.events.append(
                    (datetime.fromisoformat(match["ts"]), bool(match["deleted"]), match["link"])
                )

    def repair_times(self) -> list[float]:
        """Seconds from each deletion to the next addition of the address."""
        times, deleted_at = [], None
        for stamp, deleted, _ in self.events:
            if deleted:
                deleted_at = stamp
            elif deleted_at is not None:
                times.append((stamp - deleted_at).total_seconds())
                deleted_at = None
        return times

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)
