"""The benchmark harness's --quick mode end to end (real Envoy gateway and node Envoy, real apiproxy,
iperf3, wrk and the load generator's reconnect storm on loopback): it must finish, and its JSON must hold
every figure for every variant."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import metrics
from benchmarks.topology import VARIANTS

pytestmark = pytest.mark.envoy
ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_every_figure_for_every_variant(tmp_path: Path) -> None:
    for tool in ("iperf3", "wrk"):
        if shutil.which(tool) is None:
            pytest.skip(f"the harness needs {tool} (scripts/install-system-deps.sh installs it)")
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--output", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run 1/1: apiproxy" in done.stderr  # progress while it runs
    results = json.loads((tmp_path / "results.json").read_text())

    assert {"cpus", "kernel", "envoy", "python", "apiproxy"} <= set(results["machine"])
    assert results["settings"]["runs"] == 1
    assert [p["variant"] for p in results["passes"]] == list(VARIANTS)
    idle_counts = tuple(results["settings"]["idle_counts"])
    storm_clients = results["settings"]["storm_clients"]
    assert storm_clients == 100  # CI's storm: small
    paced_rate = results["settings"]["paced_rate"]
    for metric in metrics(idle_counts, storm_clients, paced_rate):
        row = results["summary"][metric.key]
        proxies = ("apiproxy", "envoy-c1", "envoy-c2")
        # The no-proxy variant has no node-proxy process, hence no CPU or memory figures, and no gateway.
        expected = set(VARIANTS) if metric.path[0] in {"bulk_1", "bulk_8", "bulk_1r", "setup", "paced", "keepalive", "storm"} and not (
            metric.key.startswith(("cpu_", "gw_"))
            or metric.key in ("keepalive_cpu_us", "storm_cpu_us", "paced_cpu_us", "setup_cpu_cores")
        ) else set(proxies)  # fmt: skip
        assert set(row["variants"]) == expected, metric.key
        for figure in row["variants"].values():
            assert figure["min"] <= figure["median"] <= figure["max"]
            assert len(figure["runs"]) == 1
            if metric.key == "storm_failures":
                assert figure["median"] == 0, row  # every storm tunnel served, through each proxy
            else:
                assert figure["median"] > 0, (metric.key, figure)
        # A ratio needs Envoy's figure to divide by (no failures: nothing to divide by).
        assert set(row["ratios"]) == (set() if metric.key == "storm_failures" else {"envoy-c1", "envoy-c2"})
        for ratio in row["ratios"].values():
            assert ratio["ratio"] > 0
            assert (ratio["meets_target"] is None) == (metric.target is None)
    for figures in results["passes"]:
        assert figures["setup"]["failures"] == 0, figures
        paced = figures["paced"]
        assert (paced["asked_rate"], paced["ok"], paced["failures"]) == (200, 200, 0), paced
        assert paced["p50_ms"] <= paced["p99_ms"], paced
        storm = figures["storm"]
        assert (storm["clients"], storm["ok"]) == (100, 100), storm
        assert storm["p50_ms"] <= storm["p99_ms"] <= storm["max_ms"] <= storm["served_s"] * 1000 + 1, storm
        assert figures["keepalive"]["socket_errors"] == 0, figures
        assert "error" not in figures["memory"], figures
    if "skipped" not in results["vip"]:
        assert len(results["vip"]["repair_ms"]) == results["settings"]["vip_deletions"]

    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in done.stderr
    else:
        assert (tmp_path / "ratios.png").read_bytes().startswith(b"\x89PNG")

    table = (tmp_path / "results.md").read_text()
    assert "| Metric | Unit | apiproxy | Envoy c1 | Envoy c2 | no proxy |" in table
    assert "| Reconnect storm (100 clients): all served after | s |" in table
    assert "| Paced setup (200 tunnels/s): node CPU per tunnel | µs |" in table
    assert "circuit breakers raised to 11,000" in table  # the node Envoy's limits, said under the table
    assert table in done.stdout


def test_a_bad_flag_is_one_line_naming_it() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--variants", "apiproxy,nginx"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 2
    assert "--variants 'apiproxy,nginx': expected a comma-separated subset of" in done.stderr
    assert "Traceback" not in done.stderr
