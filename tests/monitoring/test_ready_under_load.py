"""`/ready` answers in time while a bulk transfer keeps the proxy's event loop busy.

iperf3 pushes data through apiproxy and the lab gateway (both busy, on the 2 cores CI has) while this
test probes `/ready` the way kubelet does: a new connection per probe, a 1 s timeout. The bound asserted
is kubelet's timeout; the figures measured are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.gateway import DESTINATION, GatewayConfig, free_port, start_gateway

from .lab import apiproxy

pytestmark = pytest.mark.envoy

TRANSFER_SECONDS = 4
PROBES = 25
KUBELET_TIMEOUT = 1.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_ready(port: int) -> tuple[float, int]:
    """One kubelet-style probe: (seconds to the full answer, status)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /ready HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        answer = b""
        while data := sock.recv(4096):
            answer += data
    return time.monotonic() - started, int(answer.split(b" ", 2)[1])


@pytest.fixture
def iperf_server() -> Iterator[int]:
    binary = shutil.which("iperf3")
    if binary is None:
        pytest.skip("iperf3 not installed (Debian package iperf3; scripts/install-system-deps.sh)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "-s", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()  # iperf3 shrugs this off
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def test_ready_answers_within_a_second_while_the_loop_is_saturated(iperf_server: int) -> None:
    gateway_config = GatewayConfig(clusters={DESTINATION: ("127.0.0.1", iperf_server)})
    gateway = start_gateway(gateway_config)
    try:
        with apiproxy(gateway_config.port) as (proxy, listen_port, metrics_port):
            idle = sorted(probe_ready(metrics_port)[0] for _ in range(5))
            client = subprocess.Popen(
                [shutil.which("iperf3") or "iperf3", "-c", "127.0.0.1", "-p", str(listen_port),
                 "-t", str(TRANSFER_SECONDS), "-P", "4", "-J"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                time.sleep(1.0)  # let the transfer ramp up
                cpu_before, probes_started = cpu_seconds(proxy.pid), time.monotonic()
                loaded: list[float] = []
                for _ in range(PROBES):
                    if client.poll() is not None:
                        break
                    seconds, status = probe_ready(metrics_port)
                    assert status == 200
                    loaded.append(seconds)
                    time.sleep(0.08)
                busy = (cpu_seconds(proxy.pid) - cpu_before) / (time.monotonic() - probes_started)
                out, err = client.communicate(timeout=TRANSFER_SECONDS + 20)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait(5)
    finally:
        gateway.stop()
    assert client.returncode == 0, err.decode()[-2000:]
    report = json.loads(out)
    gigabits = report["end"]["sum_received"]["bits_per_second"] / 1e9
    assert len(loaded) >= 10, "the transfer ended before the probes did"
    loaded.sort()
    print(
        f"\n/ready latency idle: median {idle[len(idle) // 2] * 1000:.1f} ms; under a {gigabits:.2f} Gbit/s "
        f"transfer: median {loaded[len(loaded) // 2] * 1000:.1f} ms, max {loaded[-1] * 1000:.1f} ms "
        f"({len(loaded)} probes; apiproxy used {busy:.0%} of a core meanwhile)"
    )
    assert loaded[-1] < KUBELET_TIMEOUT
