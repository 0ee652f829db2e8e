"""VIP repair time, measured as tests/vip does: apiproxy keeps a VIP on a bridge link (this kernel may lack
the dummy driver) in a network namespace created here; the VIP is deleted repeatedly and `ip -ts monitor
address` timestamps each deletion and re-addition. The Go sidecar repairs only on its periodic sync
(1 minute), so its repair time is modelled, not measured: uniform over the interval, median 30 s."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any

from apiproxy.lab.proxy import ApiproxyProcess

VIP = "240.168.102.23"
LINK = "apiserver-proxy"
MARKER = "10.201.0.1"
SYNC_INTERVAL_S = 60.0
_LINE = re.compile(
    r"^\[(?P<ts>[^\]]+)\] (?P<deleted>Deleted )?\d+: (?P<link>\S+)\s+inet (?P<address>[^/ ]+)/"
)


def _ip(namespace: str, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["ip", "-n", namespace, *args], capture_output=True, text=True, timeout=30, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"ip -n {namespace} {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why the VIP figure cannot be measured here, or None."""
    if os.geteuid() != 0:
        return f"needs root for a network namespace (uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    return None


class _Monitor:
    def __init__(self, namespace: str) -> None:
        self.process = subprocess.Popen(["ip", "-n", namespace, "-ts", "monitor", "address"],
                                        stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.events: list[tuple[datetime, bool]] = []
        self.seen_marker = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        # `ip monitor` subscribes some time after it starts: wait until it reports a marker address.
        deadline = time.monotonic() + 10
        while not self.seen_marker.is_set() and time.monotonic() < deadline:
            _ip(namespace, "addr", "add", f"{MARKER}/32", "dev", "lo")
            _ip(namespace, "addr", "del", f"{MARKER}/32", "dev", "lo")
            self.seen_marker.wait(0.05)
        if not self.seen_marker.is_set():
            self.stop()
            raise RuntimeError("ip monitor reported nothing")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = _LINE.match(line)
            if match and match["address"] == MARKER:
                self.seen_marker.set()
            elif match and match["address"] == VIP:
                self.events.append((datetime.fromisoformat(match["ts"]), bool(match["deleted"])))

    def repair_times(self) -> list[float]:
        times, deleted_at = [], None
        for stamp, deleted in self.events:
            if deleted:
                deleted_at = stamp
            elif deleted_at is not None:
                times.append((stamp - deleted_at).total_seconds())
                deleted_at = None
        return times

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)


def _vip_present(namespace: str) -> bool:
    return f"inet {VIP}/" in _ip(namespace, "addr", "show", "dev", LINK, check=False)


def measure(deletions: int) -> dict[str, Any]:
    namespace = f"apxbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True, capture_output=True, timeout=30)
    proxy = None
    try:
        _ip(namespace, "link", "set", "lo", "up")
        _ip(namespace, "link", "add", LINK, "type", "bridge")
        proxy = ApiproxyProcess(
            ["run", "--ip-address", VIP, "--interface", LINK, "--upstream", "127.0.0.1:9",
             "--destination", "outbound|443||kube-apiserver.shoot--bench--vip.svc.cluster.local",
             "--metrics-address", "off", "--sync-interval", "1m"],
            command=["ip", "netns", "exec", namespace, sys.executable, "-m", "apiproxy"],
        ).start()  # fmt: skip
        monitor = _Monitor(namespace)
        try:
            for _ in range(deletions):
                _ip(namespace, "addr", "del", f"{VIP}/32", "dev", LINK)
                deadline = time.monotonic() + 5
                while not _vip_present(namespace) and time.monotonic() < deadline:
                    time.sleep(0.002)
                time.sleep(0.05)
            time.sleep(0.2)
        finally:
            monitor.stop()
        times_ms = [t * 1e3 for t in monitor.repair_times()]
        if len(times_ms) != deletions:
            raise RuntimeError(f"{deletions} deletions but {len(times_ms)} repairs seen: {monitor.events}")
        return {"repair_ms": times_ms, "median_ms": statistics.median(times_ms), "max_ms": max(times_ms),
                "periodic_sync_model_median_ms": SYNC_INTERVAL_S / 2 * 1e3,
                "periodic_sync_model_max_ms": SYNC_INTERVAL_S * 1e3}  # fmt: skip
    finally:
        if proxy is not None:
            proxy.cleanup()
        subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True, timeout=30)
