"""A run's (or a merge's) results: results.json (every histogram, per phase and per second, the settings,
the machine, one entry per shard), results.md (the tables, also printed) and load.png (latency over time
and percentile curves; skipped with one line when matplotlib is not installed).

Rates are per shard and add up over shards: `asked_rate` is the shard's share of the schedule, and
`achieved_rate` what it really started — units started over the time from its first start to its last
(open loop), or for a storm or hold, tunnels set up per second until the last one was answered.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .monitor import BUSY_LIMIT, WAIT_LIMIT
from .plan import Plan, Scenario, Target
from .record import OTHER_PHASES, SETUP_PHASES, Recorder
from .workers import Outcome

FORMAT = "apiproxy-load/1"
# `--log-results` prints results.json on one stdout line behind this, for collecting from pod logs.
RESULTS_LINE_PREFIX = "apiproxy-load-results: "
LIMITED = "the load generator, not the target, was the limit"


def machine() -> dict[str, Any]:
    """The machine the generator ran on."""
    try:
        uvloop: str | None = metadata.version("uvloop")
    except metadata.PackageNotFoundError:
        uvloop = None
    return {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "uvloop": uvloop,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def verdict(monitors: list[dict[str, Any]]) -> dict[str, Any]:
    """Was the generator itself the limit? Yes when a worker spent a tenth of its seconds (at least one)
    busy or starved (see `monitor`)."""
    reasons = []
    for monitor in monitors:
        seconds = len(monitor["seconds"])
        enough = max(1, math.ceil(0.1 * seconds))
        figures = f"{monitor['busy']:.0%} of a CPU overall, event-loop lag p99 {monitor['lag']['p99_ms'] or 0:.1f} ms"
        if monitor["busy_seconds"] >= enough:
            reasons.append(f"worker {monitor['worker']} was busy (>= {BUSY_LIMIT:.0%} of a CPU, or its own "
                           f"callbacks holding the loop) in {monitor['busy_seconds']} of {seconds} s ({figures})")  # fmt: skip
        elif monitor["starved_seconds"] >= enough:
            reasons.append(f"worker {monitor['worker']} waited for a CPU (>= {WAIT_LIMIT:.0%} of the time) in "
                           f"{monitor['starved_seconds']} of {seconds} s ({figures}): other processes had this "
                           "machine's CPUs")  # fmt: skip
    busy = [m["busy"] for m in monitors if m["busy"] is not None]
    lags = [m["lag"]["max_ms"] for m in monitors if m["lag"]["max_ms"] is not None]
    return {
        "limited": bool(reasons),
        "verdict": LIMITED if reasons else "no sign that the load generator was the limit",
        "reasons": reasons,
        "busy_max": max(busy, default=None),
        "lag_max_ms": max(lags, default=None),
        "workers": monitors,
    }


def _rates(scenario: Scenario, shards: int, recorder: Recorder) -> tuple[float | None, float | None]:
    if scenario.kind in ("rate", "requests"):
        span = (recorder.last_start or 0.0) - (recorder.first_start or 0.0)
        achieved = (recorder.started - 1) / span if recorder.started > 1 and span > 0 else None
        return scenario.rate / shards, achieved
    if scenario.kind in ("storm", "hold") and recorder.last_setup_answer:
        return None, recorder.tallies["tunnels"].ok / recorder.last_setup_answer
    return None, None


def shard_entry(plan: Plan, outcome: Outcome) -> dict[str, Any]:
    asked, achieved = _rates(plan.scenario, plan.shard.count, outcome.recorder)
    duration = plan.scenario.duration or outcome.seconds
    return {
        "shard": str(plan.shard),
        "asked_rate": asked,
        "achieved_rate": achieved,
        "gbit_per_s": outcome.recorder.bytes_received * 8 / duration / 1e9
        if plan.scenario.kind == "bulk"
        else None,
        "started_at": _iso(outcome.started_at),
        "duration_s": round(outcome.seconds, 3),
        "interrupted": outcome.interrupted,
        "errors": outcome.errors,
        "span": outcome.recorder.span(),
        "generator": verdict(outcome.monitors),
        "machine": machine(),
    }


def _sum(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(v for v in values if v is not None)


def document(settings: dict[str, Any], recorder: Recorder, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json: the recorder's figures, rates and verdicts summed over `shards`."""
    scenario = Scenario(**settings["scenario"])
    target = Target(
        **{**settings["target"], "destination_headers": tuple(settings["target"]["destination_headers"])}
    )
    limited = [reason for shard in shards for reason in shard["generator"]["reasons"]]
    body = recorder.to_json()
    body.pop("span")
    return {
        "format": FORMAT,
        "scenario": scenario.kind,
        "description": f"{scenario.describe()} against {target.describe()}",
        "target": {**settings["target"], "description": target.describe()},
        "settings": settings,
        "asked_rate": _sum([shard["asked_rate"] for shard in shards]),
        "achieved_rate": _sum([shard["achieved_rate"] for shard in shards]),
        "gbit_per_s": _sum([shard["gbit_per_s"] for shard in shards]),
        **body,
        "generator": {
            "limited": bool(limited),
            "verdict": LIMITED if limited else "no sign that the load generator was the limit",
            "reasons": limited,
        },
        "interrupted": any(shard["interrupted"] for shard in shards),
        "errors": [error for shard in shards for error in shard["errors"]],
        "started_at": min(shard["started_at"] for shard in shards),
        "duration_s": max(shard["duration_s"] for shard in shards),
        "shards": shards,
    }


def from_run(plan: Plan, outcome: Outcome) -> dict[str, Any]:
    return document(plan.as_dict(), outcome.recorder, [shard_entry(plan, outcome)])


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


_PHASE_LABELS = {
    "connect": "TCP connect",
    "connect_answer": "CONNECT answer",
    "tls": "TLS handshake",
    "first_byte": "first response byte",
    "total": "total (from scheduled start)",
    "request": "request (from scheduled send)",
    "probe": "probe (from scheduled probe)",
    "schedule_lag": "start behind schedule",
}


def markdown(results: dict[str, Any]) -> str:
    unit = results["unit"]
    failed = results["failed"]
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in failed.items()) or "–"
    lines = [
        f"## Load: {results['description']}",
        "",
        f"Started {results['started_at']}, {results['duration_s']:.1f} s, shard(s) "
        f"{', '.join(s['shard'] for s in results['shards'])}, "
        f"{sum(len(s['generator']['workers']) for s in results['shards'])} worker(s)."
        + (" **Interrupted (Ctrl-C): figures cover what ran.**" if results["interrupted"] else ""),
        "",
        f"| {unit} asked /s | achieved /s | ok | failed | failures by kind |",
        "|---|---|---|---|---|",
        f"| {_rate(results['asked_rate'])} | {_rate(results['achieved_rate'])} | {results['ok']:,} | "
        f"{results['failed_total']:,} | {kinds} |",
        "",
        "| phase | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in (*SETUP_PHASES, *OTHER_PHASES):
        phase = results["phases"].get(name)
        if phase is None:
            continue
        cells = [_ms(phase[key]) for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")]
        lines.append(f"| {_PHASE_LABELS[name]} | {phase['count']:,} | " + " | ".join(cells) + " |")
    lines.append("")
    if results["gbit_per_s"] is not None:
        lines += [f"Bulk: {results['gbit_per_s']:.3f} Gbit/s echoed back ({results['bytes_received']:,} of "
                  f"{results['bytes_sent']:,} bytes sent).", ""]  # fmt: skip
    first = results["first_failure"]
    if first is not None:
        lines += [
            f"First failure: {first['kind']} in {first['phase']} at {first['at_s']:.3f} s: {first['detail']}",
            "",
        ]
    if results["failed_phases"]:
        lines += [
            "Failures by phase: " + ", ".join(f"{k} {v:,}" for k, v in results["failed_phases"].items()),
            "",
        ]
    generator = results["generator"]
    if generator["limited"]:
        lines.append(f"**{LIMITED[0].upper() + LIMITED[1:]}**: " + "; ".join(generator["reasons"]) + ".")
    else:
        lines.append(f"Load generator: {generator['verdict']}.")
    for error in results["errors"]:
        lines.append(f"Error: {error}")
    return "\n".join(lines) + "\n"


def _main_latency(results: dict[str, Any]) -> str:
    return "request" if results["unit"] == "requests" else "total"


def plot(results: dict[str, Any], path: Path, warn: Callable[[str], None]) -> bool:
    """Latency over time (per second p50/p99/max, and units completed per second) and the percentile
    curve of every phase. False, with one line said, when matplotlib is not installed."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        warn("matplotlib is not installed: no load.png (pip install -e '.[bench]' or pip install matplotlib)")
        return False
    from .histogram import Histogram

    main = _main_latency(results)
    figure, (over_time, curves) = plt.subplots(2, 1, figsize=(10, 9))
    seconds = [entry for entry in results["per_second"] if main in entry["phases"]]
    x = [entry["second"] for entry in seconds]
    for key, style in (("p50_ms", "-"), ("p99_ms", "-"), ("max_ms", ":")):
        over_time.plot(
            x, [entry["phases"][main][key] for entry in seconds], style, label=f"{main} {key[:-3]}"
        )
    over_time.set_yscale("log")
    over_time.set_xlabel("second of the run (by completion)")
    over_time.set_ylabel("latency, ms")
    over_time.legend(loc="upper left")
    done = over_time.twinx()
    done.bar([e["second"] for e in results["per_second"]], [e["ok"] + e["failed"] for e in results["per_second"]],
             alpha=0.15, color="grey", width=0.9)  # fmt: skip
    done.set_ylabel(f"{results['unit']} completed per second")
    for name, phase in results["phases"].items():
        if name == "schedule_lag" or not phase["count"]:
            continue
        histogram = Histogram.from_json(phase["histogram"])
        points = [
            (1 / (1 - fraction), value / 1e3) for value, fraction in histogram.cumulative() if fraction < 1
        ]
        if points:
            curves.plot([p[0] for p in points], [p[1] for p in points], label=_PHASE_LABELS.get(name, name))
    curves.set_xscale("log")
    curves.set_yscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    curves.set_xticks(ticks, ["0 %", "50 %", "90 %", "99 %", "99.9 %", "99.99 %"])
    curves.set_xlabel("percentile")
    curves.set_ylabel("latency, ms")
    curves.legend(loc="upper left", fontsize="small")
    figure.suptitle(results["description"], fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def write(results: dict[str, Any], directory: Path, say: Callable[[str], None]) -> str:
    """Writes results.json, results.md and load.png to `directory`; returns the Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    table = markdown(results)
    (directory / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (directory / "results.md").write_text(table)
    if plot(results, directory / "load.png", say):
        say(f"wrote {directory / 'load.png'}")
    say(f"wrote {directory / 'results.json'} and {directory / 'results.md'}")
    return table
