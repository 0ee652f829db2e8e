"""The bulk workload's iperf3 client against a real iperf3 server on loopback: a server still busy with
another test is waited for (a bounded number of tries), any other failure is reported at once."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from benchmarks import loads
from lab.gateway import free_port

# The workload's `time` is replaced by one whose sleep records the waits between tries (and waits).
_sleep = time.sleep

pytestmark = pytest.mark.skipif(
    shutil.which("iperf3") is None, reason="needs iperf3 (scripts/install-system-deps.sh)"
)


@pytest.fixture
def server() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        # Listening, seen from outside: a probe connection would be a client the server has to deal with.
        deadline = time.monotonic() + 10
        while (
            f":{port} "
            not in subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
        ):
            assert time.monotonic() < deadline, "iperf3 -s did not listen"
            _sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


class _Waits:
    """Records the workload's waits between tries (and waits them)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        _sleep(seconds)


def test_a_client_refused_while_the_server_runs_another_test_tries_again(
    server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits = _Waits()
    monkeypatch.setattr(loads, "time", SimpleNamespace(sleep=waits))
    other = subprocess.Popen(["iperf3", "-c", "127.0.0.1", "-p", str(server), "-t", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _sleep(0.3)  # the other test is running
        result = loads.bulk(server, 1, 1.0)
    finally:
        other.wait(10)
    assert waits.calls  # it was refused as busy at least once, and tried again
    assert result["gbps"] > 0 and result["bytes"] > 0


def test_any_other_failure_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    waits = _Waits()
    monkeypatch.setattr(loads, "time", SimpleNamespace(sleep=waits))
    with pytest.raises(RuntimeError, match=r"iperf3 failed: .*(refused|unable to connect)"):
        loads.bulk(free_port(), 1, 1.0)
    assert waits.calls == []
