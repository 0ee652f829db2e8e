"""The workloads, each bounded in count and time, all on loopback: bulk throughput (iperf3 through the
tunnel), tunnel setup (connect, one small request/response, close, at a fixed concurrency), keep-alive
request/response (wrk over established tunnels), idle tunnels held open for the memory figures, paced
setup (new tunnels at a fixed rate below saturation: the load generator's `rate` scenario), and the
reconnect storm (N clients at once, each TLS through its tunnel and one request: the load generator's
`storm` scenario, `python -m benchmarks load`)."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
RESPONSE_END = b"\r\n\r\nok"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# iperf3's server refuses a client while it still runs the previous test ("the server is busy running a
# test"): at most this many more tries, this far apart.
_IPERF_BUSY_RETRIES = 10
_IPERF_BUSY_WAIT = 0.3


def bulk(port: int, streams: int, seconds: float, reverse: bool = False) -> dict[str, float]:
    """iperf3 through the node proxy: its control and data connections are tunnels to the iperf3 server.
    `reverse` (-R): the server sends, the bytes go gateway -> client. The server runs one test at a time
    and can still be finishing the previous one when the next client comes (seen once in a CI run, before
    Envoy c2's third test): a client refused as "busy" tries again, a bounded number of times."""
    for attempt in range(_IPERF_BUSY_RETRIES + 1):
        done = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-P", str(streams), "-t", f"{seconds:g}", "-J",
             *(["-R"] if reverse else [])],
            capture_output=True, text=True, timeout=seconds + 30, check=False,
        )  # fmt: skip
        report = json.loads(done.stdout or "{}")
        error = (
            report.get("error", done.stderr.strip()) if done.returncode != 0 or "error" in report else None
        )
        if error is None:
            break
        if "busy" not in str(error) or attempt == _IPERF_BUSY_RETRIES:
            raise RuntimeError(f"iperf3 failed: {error}")
        time.sleep(_IPERF_BUSY_WAIT)
    received = report["end"]["sum_received"]
    return {"gbps": received["bits_per_second"] / 1e9, "bytes": float(received["bytes"])}


class _Exchange(asyncio.Protocol):
    """One tunnel's client end: sends one request on connect, resolves `answered` at the response's end."""

    def __init__(self, answered: asyncio.Future[None]) -> None:
        self.answered = answered
        self.received = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast, not isinstance.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.received.endswith(RESPONSE_END) and not self.answered.done():
            self.answered.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ConnectionError(f"closed before the response: {exc}"))


async def _exchange(port: int, timeout: float) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[None] = loop.create_future()
    transport, _ = await asyncio.wait_for(
        loop.create_connection(lambda: _Exchange(answered), "127.0.0.1", port), timeout
    )
    try:
        await asyncio.wait_for(answered, timeout)
    except BaseException:
        transport.close()
        raise
    return transport


@dataclass
class SetupResult:
    tunnels: int
    failures: int
    seconds: float
    latencies: list[float]

    def figures(self) -> dict[str, float]:
        lat = self.latencies or [float("nan")]
        return {"tunnels": self.tunnels, "failures": self.failures, "per_s": self.tunnels / self.seconds,
                "p50_ms": percentile(lat, 0.5) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3,
                "mean_ms": statistics.fmean(lat) * 1e3}  # fmt: skip


async def setup(port: int, concurrency: int, seconds: float, max_tunnels: int) -> SetupResult:
    """New tunnels back to back from `concurrency` workers until `seconds` or `max_tunnels` is reached."""
    latencies: list[float] = []
    failures = 0
    started = time.perf_counter()
    deadline = started + seconds
    budget = max_tunnels

    async def worker() -> None:
        nonlocal failures, budget
        while budget > 0 and time.perf_counter() < deadline:
            budget -= 1
            t0 = time.perf_counter()
            try:
                transport = await _exchange(port, 10.0)
            except (OSError, TimeoutError):
                failures += 1
                await asyncio.sleep(0.01)
                continue
            transport.close()
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return SetupResult(len(latencies), failures, time.perf_counter() - started, latencies)


class IdleTunnels:
    """Tunnels opened (one request/response each, so each is known to reach the backend) and held."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.transports: list[asyncio.Transport] = []
        self.failures = 0

    async def grow_to(self, count: int, concurrency: int = 200, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        missing = count - len(self.transports)

        async def worker() -> None:
            nonlocal missing
            while missing > 0 and time.monotonic() < deadline and self.failures < 100:
                missing -= 1
                try:
                    self.transports.append(await _exchange(self.port, 10.0))
                except (OSError, TimeoutError):
                    self.failures += 1
                    missing += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if len(self.transports) < count:
            raise RuntimeError(f"only {len(self.transports)} of {count} idle tunnels opened "
                               f"({self.failures} failures)")  # fmt: skip

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        self.transports.clear()


def _load_generator(arguments: list[str], timeout: float, what: str) -> dict[str, Any]:
    """Runs `python -m benchmarks load ARGUMENTS` in processes of its own (its workers use every CPU) and
    returns its results.json."""
    with tempfile.TemporaryDirectory(prefix="apiproxy-bench-load-") as output:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks", "load", *arguments, "--output", output],
            capture_output=True, text=True, timeout=timeout, check=False,
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        results_file = Path(output) / "results.json"
        if not results_file.exists():
            raise RuntimeError(f"the {what}'s load generator failed: {done.stderr.strip()[-800:]}")
        results: dict[str, Any] = json.loads(results_file.read_text())
        return results


def paced(port: int, rate: float, seconds: float, timeout: float) -> dict[str, Any]:
    """New tunnels at a fixed rate, open loop (tunnel i starts at i/rate s whatever the others are doing),
    each one plain request and its answer: the load generator's rate scenario. Below the machine's
    capacity, unlike the setup workload, no process waits for a CPU, so the node proxy's CPU per tunnel
    is the cost of a tunnel rather than its share of a saturated machine divided by the rate."""
    results = _load_generator(
        ["rate", f"{rate:g}", "--duration", f"{seconds:g}s", "--target", f"127.0.0.1:{port}", "--plain",
         "--timeout", f"{timeout:g}s"],
        seconds + timeout + 120, "paced setup",
    )  # fmt: skip
    total = results["phases"].get("total") or {}
    return {
        "asked_rate": results["asked_rate"],
        "achieved_rate": results["achieved_rate"],
        "ok": results["ok"],
        "failures": results["failed_total"],
        "p50_ms": total.get("p50_ms"),
        "p99_ms": total.get("p99_ms"),
        "generator_limited": results["generator"]["limited"],
        "generator": results["generator"]["verdict"],
    }


def storm(port: int, clients: int, ca_file: Path, timeout: float) -> dict[str, Any]:
    """`clients` tunnels started at once against 127.0.0.1:`port`, each a TLS handshake through the tunnel
    (verified as kubernetes.default.svc against `ca_file`) and one request, all held until the last is
    answered, as pods reconnecting after an API server restart: the load generator's storm scenario in a
    process of its own (its workers use every CPU). Returns the time until all were served, the latency per
    tunnel from the storm's start to its answer, the failures, and the generator's verdict on itself."""
    results = _load_generator(
        ["storm", str(clients), "--target", f"127.0.0.1:{port}", "--ca", str(ca_file), "--timeout", f"{timeout:g}s"],
        timeout + 120, "storm",
    )  # fmt: skip
    total = results["phases"].get("total") or {}
    return {
        "clients": clients,
        "ok": results["ok"],
        "failures": results["failed_total"],
        "failed": results["failed"],
        "first_failure": results["first_failure"],
        # From the storm's start (every client's scheduled start) to the last answer.
        "served_s": results["shards"][0]["span"]["last_setup_answer_s"],
        "p50_ms": total.get("p50_ms"),
        "p99_ms": total.get("p99_ms"),
        "max_ms": total.get("max_ms"),
        "generator_limited": results["generator"]["limited"],
        "generator": results["generator"]["verdict"],
    }


_WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def keepalive(port: int, connections: int, seconds: float) -> dict[str, float]:
    """wrk over `connections` kept-alive tunnels: requests per second and latency p50/p99 in ms."""
    done = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--latency", "--timeout", "5s",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 30, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout[-500:]}")
    latency = {p: float(v) * _UNITS[u] for p, v, u in _WRK_LATENCY.findall(done.stdout)}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", done.stdout)
    if rate is None or set(latency) != {"50", "99"}:
        raise RuntimeError(f"cannot read wrk's output: {done.stdout[-800:]}")
    return {"rps": float(rate[1]), "p50_ms": latency["50"], "p99_ms": latency["99"],
            "socket_errors": float(sum(int(n) for n in errors.groups())) if errors else 0.0}  # fmt: skip


def measured(
    pid: int | None, cpu: Callable[[int], float], action: Callable[[], object]
) -> tuple[object, float | None]:
    """Run `action`; return its result and the CPU seconds `pid` spent meanwhile (None without a pid)."""
    before = cpu(pid) if pid is not None else 0.0
    result = action()
    return result, (cpu(pid) - before if pid is not None else None)
