"""`python -m benchmarks load` end to end against the lab topology on loopback: the TLS kube-apiserver stub
and a TLS echo server behind a real Envoy seed gateway configured like Gardener's, and `apiproxy run` in
front of it — through apiproxy (node-proxy target) and through the gateway directly (CONNECT target).

Every run is a child process with small counts and short durations; what is asserted is what an operator
reads: counts, failure kinds, the open loop's achieved rate, the tail that a stall leaves, the JSON.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.load.histogram import Histogram
from lab.backend import EchoServer, KubeAPIStub
from lab.certs import make_certificates
from lab.gateway import DESTINATION, GatewayConfig, free_port, start_gateway
from lab.loop_thread import LoopThread
from lab.proxy import ApiproxyProcess

pytestmark = pytest.mark.envoy
ROOT = Path(__file__).resolve().parents[2]
ECHO_DESTINATION = "outbound|443||kube-apiserver.shoot--load--echo.svc.cluster.local"
PHASE_FIGURES = {"count", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"}


@dataclass
class Lab:
    ca_file: Path
    apiproxy: str  # HOST:PORT of `apiproxy run`
    gateway: str  # HOST:PORT of the seed gateway
    loop: LoopThread
    stub: KubeAPIStub


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    with LoopThread() as loop:
        stub = KubeAPIStub(certs.server_context())
        stub_port = loop.run(stub.start())
        echo_port = loop.run(EchoServer(certs.server_context()).start())
        config = GatewayConfig(
            clusters={DESTINATION: ("127.0.0.1", stub_port), ECHO_DESTINATION: ("127.0.0.1", echo_port)}
        )
        gateway = start_gateway(config)
        try:
            port = free_port()
            args = ["run", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{config.port}",
                    "--destination", DESTINATION, "--metrics-address", "off", "--no-access-log"]  # fmt: skip
            with ApiproxyProcess(args):
                yield Lab(certs.ca_file, f"127.0.0.1:{port}", f"127.0.0.1:{config.port}", loop, stub)
        finally:
            gateway.stop()


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    results: dict[str, Any] | None


def load(output: Path, *args: str, timeout: float = 60) -> Run:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "load", *args, "--output", str(output)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
    file = output / "results.json"
    return Run(
        done.returncode, done.stdout, done.stderr, json.loads(file.read_text()) if file.exists() else None
    )


def through_apiproxy(lab: Lab) -> tuple[str, ...]:
    return ("--target", lab.apiproxy, "--ca", str(lab.ca_file))


def through_gateway(lab: Lab, destination: str = DESTINATION) -> tuple[str, ...]:
    return ("--gateway", lab.gateway, "--destination", destination, "--ca", str(lab.ca_file))


def succeeded(run: Run) -> dict[str, Any]:
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.results is not None
    return run.results


@pytest.fixture(scope="module")
def storm_via_apiproxy(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return load(tmp_path_factory.mktemp("storm"), "storm", "200", *through_apiproxy(lab), "--workers", "2")


def test_a_storm_of_200_through_apiproxy_sets_up_every_tunnel(storm_via_apiproxy: Run, lab: Lab) -> None:
    results = succeeded(storm_via_apiproxy)
    assert (results["ok"], results["failed"], results["started"]) == (200, {}, 200)
    phases = results["phases"]
    # A node proxy: no CONNECT answer to time; TLS to the API stub through the tunnel, verified.
    assert "connect_answer" not in phases
    for name in ("connect", "tls", "first_byte", "total"):
        assert phases[name]["count"] == 200, name
    assert phases["total"]["p50_ms"] >= phases["tls"]["p50_ms"]
    assert results["achieved_rate"] > 0
    assert results["asked_rate"] is None  # a storm asks for no rate
    assert "| tunnels asked /s | achieved /s | ok | failed |" in storm_via_apiproxy.stdout


def test_a_storm_of_200_through_the_gateway_times_the_connect_answer(lab: Lab, tmp_path: Path) -> None:
    results = succeeded(load(tmp_path, "storm", "200", *through_gateway(lab), "--workers", "2"))
    assert (results["ok"], results["failed"]) == (200, {})
    for name in ("connect", "connect_answer", "tls", "first_byte", "total"):
        assert results["phases"][name]["count"] == 200, name


def test_the_json_holds_every_field_the_issue_lists(storm_via_apiproxy: Run) -> None:
    results = succeeded(storm_via_apiproxy)
    assert {"scenario", "target", "asked_rate", "achieved_rate", "ok", "failed", "phases", "per_second",
            "settings", "generator", "shards"} <= set(results)  # fmt: skip
    assert results["scenario"] == "storm"
    assert results["target"]["kind"] == "node"
    for name, phase in results["phases"].items():
        assert set(phase) >= PHASE_FIGURES, name
        histogram = Histogram.from_json(phase["histogram"])  # every phase histogram, complete
        assert histogram.count == phase["count"]
        assert phase["p50_ms"] <= phase["p90_ms"] <= phase["p99_ms"] <= phase["p999_ms"] <= phase["max_ms"]
    seconds = results["per_second"]
    assert sum(s["ok"] for s in seconds) == 200
    assert sum(s["phases"]["total"]["count"] for s in seconds if "total" in s["phases"]) == 200
    (shard,) = results["shards"]
    assert shard["shard"] == "0/1"
    assert {"cpus", "kernel", "python"} <= set(shard["machine"])
    assert [w["worker"] for w in shard["generator"]["workers"]] == [0, 1]
    assert results["generator"]["verdict"]


def test_an_open_loop_rate_run_holds_the_asked_rate(lab: Lab, tmp_path: Path) -> None:
    results = succeeded(
        load(tmp_path, "rate", "50", "--duration", "3s", *through_apiproxy(lab), "--workers", "1")
    )
    assert results["asked_rate"] == 50
    assert results["achieved_rate"] == pytest.approx(50, rel=0.05)
    assert (results["ok"], results["failed"]) == (150, {})
    assert results["phases"]["schedule_lag"]["count"] == 150


class _StalledAnswerer:
    """A plain HTTP server that answers every request only after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def start(self) -> int:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_a_stalled_target_shows_in_the_tail_not_as_a_slower_schedule(lab: Lab, tmp_path: Path) -> None:
    stall = 0.3
    port = lab.loop.run(_StalledAnswerer(stall).start())
    results = succeeded(load(tmp_path, "rate", "40", "--duration", "1.5s", "--target", f"127.0.0.1:{port}",
                             "--plain", "--workers", "1"))  # fmt: skip
    total = results["phases"]["total"]
    assert total["p99_ms"] >= stall * 1000
    assert total["p50_ms"] >= stall * 1000
    # Open loop: the stall did not slow the schedule down.
    assert results["achieved_rate"] == pytest.approx(40, rel=0.05)
    assert results["ok"] == 60


def test_an_unreachable_target_is_a_result_naming_the_failure(tmp_path: Path) -> None:
    run = load(tmp_path, "storm", "20", "--target", f"127.0.0.1:{free_port()}", "--plain", "--workers", "1")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.results is not None
    assert (run.results["ok"], run.results["failed"]) == (0, {"refused": 20})
    assert run.results["first_failure"]["kind"] == "refused"
    assert run.results["first_failure"]["phase"] == "connect"
    assert "no tunnel succeeded: refused in connect" in run.stderr
    assert "| 0 | 20 | refused 20 |" in run.stdout


def merge(output: Path, *inputs: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "load", "merge", *map(str, inputs), "--output", str(output)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done, json.loads((output / "results.json").read_text())


def test_two_shards_merge_into_the_counts_of_one_run(lab: Lab, tmp_path: Path) -> None:
    runs = [
        load(tmp_path / f"shard-{i}", "storm", "100", *through_gateway(lab), "--shard", f"{i}/2", "--workers", "1",
             "--log-results")
        for i in range(2)
    ]  # fmt: skip
    shards = [succeeded(run) for run in runs]
    assert [s["ok"] for s in shards] == [50, 50]
    done, merged = merge(tmp_path / "merged", tmp_path / "shard-0", tmp_path / "shard-1")
    assert (merged["ok"], merged["failed"], merged["started"]) == (100, {}, 100)
    assert merged["missing_shards"] == []
    assert [s["shard"] for s in merged["shards"]] == ["0/2", "1/2"]
    assert merged["achieved_rate"] == pytest.approx(sum(s["achieved_rate"] for s in shards))
    for name in ("connect", "connect_answer", "tls", "first_byte", "total"):
        expected = Histogram.from_json(shards[0]["phases"][name]["histogram"])
        expected.merge(Histogram.from_json(shards[1]["phases"][name]["histogram"]))
        assert Histogram.from_json(merged["phases"][name]["histogram"]) == expected
        assert merged["phases"][name]["count"] == 100
    assert "| 100 | 0 |" in done.stdout

    # The load Job's way: both pods' logs (progress, table, results line) in one file, as kubectl logs gives.
    log = tmp_path / "load.log"
    log.write_text("".join(run.stderr + run.stdout for run in reversed(runs)))
    _, from_log = merge(tmp_path / "merged-log", log)
    assert sorted(s["shard"] for s in from_log["shards"]) == ["0/2", "1/2"]
    assert from_log["phases"] == merged["phases"]
    assert from_log["per_second"] == merged["per_second"]


def test_hold_keeps_tunnels_and_probes_each(lab: Lab, tmp_path: Path) -> None:
    results = succeeded(load(tmp_path, "hold", "20", "--duration", "2s", "--probe-interval", "500ms",
                             *through_apiproxy(lab), "--workers", "1"))  # fmt: skip
    assert (results["ok"], results["failed"]) == (20, {})
    probes = results["tallies"]["probes"]
    assert probes["failed_total"] == 0
    assert probes["ok"] >= 20 * 2  # at least two rounds of probes in the 2 s
    assert results["phases"]["probe"]["count"] == probes["ok"]


def test_requests_over_kept_tunnels_hold_the_asked_rate(lab: Lab, tmp_path: Path) -> None:
    results = succeeded(load(tmp_path, "requests", "--connections", "4", "--rate", "100", "--duration", "2s",
                             "--path", "/api", *through_gateway(lab), "--workers", "2"))  # fmt: skip
    assert results["unit"] == "requests"
    assert (results["ok"], results["failed"]) == (200, {})
    assert results["tallies"]["tunnels"]["ok"] == 4
    assert results["phases"]["request"]["count"] == 200
    assert results["achieved_rate"] == pytest.approx(100, rel=0.05)
    assert "/api" in lab.stub.requests


def test_bulk_echoes_through_the_gateway(lab: Lab, tmp_path: Path) -> None:
    results = succeeded(load(tmp_path, "bulk", "--connections", "2", "--duration", "1s",
                             *through_gateway(lab, ECHO_DESTINATION), "--workers", "1"))  # fmt: skip
    assert (results["ok"], results["failed"]) == (2, {})
    assert results["bytes_received"] == results["bytes_sent"] > 0
    assert results["gbit_per_s"] > 0


def test_the_lab_topology_with_envoy_on_gardeners_config_is_a_target(tmp_path: Path) -> None:
    results = succeeded(load(tmp_path, "storm", "100", "--lab", "envoy-c1", "--workers", "1"))
    assert (results["ok"], results["failed"]) == (100, {})
    assert (results["target"]["lab"], results["target"]["kind"], results["target"]["tls"]) == (
        "envoy-c1",
        "node",
        False,
    )
    assert "the lab's envoy-c1 node proxy" in results["description"]


def test_ctrl_c_stops_the_load_and_still_writes_the_report(lab: Lab, tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "load", "rate", "20", "--duration", "60s", *through_apiproxy(lab),
         "--workers", "2", "--output", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        assert process.stderr is not None
        # Interrupt once the load is running (the first progress line is a second in).
        while "rate 1 s" not in (line := process.stderr.readline()) and time.monotonic() < deadline:
            assert line, "the load ended before it was interrupted"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["interrupted"] is True
    assert results["ok"] > 0
    assert results["started"] < 20 * 60
    assert "Interrupted (Ctrl-C)" in stdout
