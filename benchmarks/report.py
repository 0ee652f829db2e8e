"""Figures to results: medians and min-max per variant over the runs, ratios apiproxy/Envoy against the
issue's targets, and three outputs: a Markdown table, a JSON file with every figure and run, and a PNG of
the main ratios (needs matplotlib; without it the PNG is skipped with a message saying so)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENVOYS = ("envoy-c1", "envoy-c2")
NAMES = {"apiproxy": "apiproxy", "envoy-c1": "Envoy c1", "envoy-c2": "Envoy c2", "none": "no proxy"}
# A column only when measured (--variants): apiproxy without metrics and access log.
OPTIONAL_NAMES = {"apiproxy-nomon": "apiproxy, monitoring off"}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    path: tuple[str, str]
    scale: float = 1.0
    # The target for apiproxy/Envoy: ("max", 0.9) means the ratio must be at most 0.9.
    target: tuple[str, float] | None = None

    def value(self, figures: dict[str, Any]) -> float | None:
        section = figures.get(self.path[0]) or {}
        raw = section.get(self.path[1])
        return None if raw is None else float(raw) * self.scale

    def target_text(self) -> str:
        if self.target is None:
            return ""
        return f"{'≥' if self.target[0] == 'min' else '≤'} {self.target[1]:g}×"

    def meets(self, ratio: float) -> bool:
        assert self.target is not None
        return ratio >= self.target[1] if self.target[0] == "min" else ratio <= self.target[1]


def metrics(
    idle_counts: tuple[int, int], storm_clients: int | None = None, paced_rate: float | None = None
) -> list[Metric]:
    small, large = idle_counts
    storm = f"Reconnect storm ({storm_clients:,} clients)" if storm_clients else "Reconnect storm"
    paced = f"Paced setup ({paced_rate:,.0f} tunnels/s)" if paced_rate else "Paced setup"
    return [
        Metric("bulk_1_gbps", "Bulk throughput, 1 stream", "Gbit/s", ("bulk_1", "gbps"), target=("min", 1.3)),
        Metric("bulk_8_gbps", "Bulk throughput, 8 streams", "Gbit/s", ("bulk_8", "gbps"), target=("min", 1.2)),
        Metric("bulk_1r_gbps", "Bulk throughput, 1 stream reverse", "Gbit/s", ("bulk_1r", "gbps"), target=("min", 1.3)),
        Metric("cpu_per_gb_1", "Node CPU per GB, 1 stream", "CPU s/GB", ("bulk_1", "cpu_s_per_gb"), target=("max", 0.4)),
        Metric("cpu_per_gb_8", "Node CPU per GB, 8 streams", "CPU s/GB", ("bulk_8", "cpu_s_per_gb"), target=("max", 0.4)),
        Metric("cpu_per_gb_1r", "Node CPU per GB, 1 stream reverse", "CPU s/GB", ("bulk_1r", "cpu_s_per_gb"), target=("max", 0.4)),
        Metric("gw_cpu_per_gb_1", "Seed gateway CPU per GB, 1 stream", "CPU s/GB", ("bulk_1", "gateway_cpu_s_per_gb"), target=("max", 1.0)),
        Metric("gw_cpu_per_gb_8", "Seed gateway CPU per GB, 8 streams", "CPU s/GB", ("bulk_8", "gateway_cpu_s_per_gb"), target=("max", 1.0)),
        Metric("gw_cpu_per_gb_1r", "Seed gateway CPU per GB, 1 stream reverse", "CPU s/GB", ("bulk_1r", "gateway_cpu_s_per_gb"), target=("max", 1.0)),
        Metric("setup_per_s", "Tunnel setup rate", "tunnels/s", ("setup", "per_s"), target=("min", 1.1)),
        Metric("setup_p50_ms", "Tunnel setup latency p50", "ms", ("setup", "p50_ms")),
        Metric("setup_p99_ms", "Tunnel setup latency p99", "ms", ("setup", "p99_ms"), target=("max", 0.9)),
        Metric("cpu_per_tunnel_us", "Node CPU per tunnel", "µs", ("setup", "cpu_us_per_tunnel"), target=("max", 0.85)),
        Metric("setup_cpu_cores", "Node CPU used under the setup load", "cores", ("setup", "cpu_cores")),
        Metric("paced_p50_ms", f"{paced}: latency p50", "ms", ("paced", "p50_ms")),
        Metric("paced_p99_ms", f"{paced}: latency p99", "ms", ("paced", "p99_ms")),
        Metric("paced_cpu_us", f"{paced}: node CPU per tunnel", "µs", ("paced", "cpu_us_per_tunnel")),
        Metric("keepalive_rps", "Keep-alive requests/s", "req/s", ("keepalive", "rps")),
        Metric("keepalive_p50_ms", "Keep-alive latency p50", "ms", ("keepalive", "p50_ms")),
        Metric("keepalive_p99_ms", "Keep-alive latency p99", "ms", ("keepalive", "p99_ms"), target=("max", 0.9)),
        Metric("keepalive_cpu_us", "Node CPU per keep-alive request", "µs", ("keepalive", "cpu_us_per_request")),
        Metric("rss_start_mib", "RSS at start", "MiB", ("memory", "rss_start"), 1 / 2**20, target=("max", 0.5)),
        Metric(f"rss_per_tunnel_{small}", f"Memory per idle tunnel ({small:,} open)", "KiB",
               ("memory", f"bytes_per_tunnel_{small}"), 1 / 1024, target=("max", 0.1)),
        Metric(f"rss_per_tunnel_{large}", f"Memory per idle tunnel ({large:,} open)", "KiB",
               ("memory", f"bytes_per_tunnel_{large}"), 1 / 1024, target=("max", 0.1)),
        Metric("storm_served_s", f"{storm}: all served after", "s", ("storm", "served_s")),
        Metric("storm_p50_ms", f"{storm}: latency per tunnel p50", "ms", ("storm", "p50_ms")),
        Metric("storm_p99_ms", f"{storm}: latency per tunnel p99", "ms", ("storm", "p99_ms")),
        Metric("storm_max_ms", f"{storm}: latency per tunnel max", "ms", ("storm", "max_ms")),
        Metric("storm_failures", f"{storm}: failed tunnels", "tunnels", ("storm", "failures")),
        Metric("storm_cpu_us", f"{storm}: node CPU per tunnel", "µs", ("storm", "cpu_us_per_tunnel")),
    ]  # fmt: skip


def summarize(
    passes: list[dict[str, Any]],
    variants: tuple[str, ...],
    idle_counts: tuple[int, int],
    storm_clients: int | None = None,
    paced_rate: float | None = None,
) -> dict[str, Any]:
    """Per metric and variant: median, min, max and every run's value; per metric: the ratios to each Envoy."""
    summary: dict[str, Any] = {}
    for metric in metrics(idle_counts, storm_clients, paced_rate):
        row: dict[str, Any] = {"label": metric.label, "unit": metric.unit, "target": metric.target_text(),
                               "variants": {}, "ratios": {}}  # fmt: skip
        for variant in variants:
            values = [v for p in passes if p["variant"] == variant if (v := metric.value(p)) is not None]
            if values:
                row["variants"][variant] = {"median": statistics.median(values), "min": min(values),
                                            "max": max(values), "runs": values}  # fmt: skip
        ours = row["variants"].get("apiproxy")
        for envoy in ENVOYS:
            theirs = row["variants"].get(envoy)
            if ours and theirs and theirs["median"]:
                ratio = ours["median"] / theirs["median"]
                row["ratios"][envoy] = {
                    "ratio": ratio,
                    "meets_target": metric.meets(ratio) if metric.target else None,
                }
        summary[metric.key] = row
    return summary


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(figure: dict[str, Any] | None) -> str:
    if not figure:
        return "–"
    if len(figure["runs"]) == 1:
        return _number(figure["median"])
    return f"{_number(figure['median'])} ({_number(figure['min'])}–{_number(figure['max'])})"


def _ratio_cell(ratio: dict[str, Any] | None) -> str:
    if not ratio:
        return "–"
    mark = {True: " ✓", False: " ✗", None: ""}[ratio["meets_target"]]
    return f"{ratio['ratio']:.2f}×{mark}"


# Under the table: how the node Envoy was run (its limits would otherwise decide the tunnel figures).
ENVOY_NOTE = (
    "Envoy c1/c2: Gardener's envoy.yaml (`--concurrency 1`/`2`) with the listener limits and the cluster's "
    "circuit breakers raised to 11,000 tunnels. Gardener's config sets no circuit breakers, and Envoy's default "
    "of 1,024 connections per cluster would reset every tunnel beyond the 1,024th (a reconnect storm's, the "
    "10,000 idle tunnels'). Reconnect storm: every client starts at once, TLS through its tunnel (verified as "
    "kubernetes.default.svc) and one request; latency per tunnel from the storm's start to its answer. "
    "Setup: closed loop, the machine saturated; every process then gets about its share of the cores (the "
    "'cores' row), so node CPU per tunnel is that share over the rate the whole path reached. Paced setup: new "
    "tunnels at a fixed rate (open loop) below saturation, where node CPU per tunnel is what a tunnel costs."
)


def markdown(summary: dict[str, Any], vip: dict[str, Any] | None, runs: int) -> str:
    measured = {variant for row in summary.values() for variant in row["variants"]}
    names = {**NAMES, **{v: name for v, name in OPTIONAL_NAMES.items() if v in measured}}
    header = ["Metric", "Unit", *names.values(), "apiproxy/Envoy c1", "apiproxy/Envoy c2", "Target"]
    lines = [f"Medians over {runs} run(s), (min–max) when more than one; ✓/✗: the issue's target met or not.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    for row in summary.values():
        cells = [row["label"], row["unit"], *(_cell(row["variants"].get(v)) for v in names),
                 *(_ratio_cell(row["ratios"].get(e)) for e in ENVOYS), row["target"]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    others = " | ".join("–" * (len(names) - 1 + len(ENVOYS)))  # the cells after apiproxy's, before the target
    if vip is not None and "median_ms" in vip:
        times = vip["repair_ms"]
        ours = f"{_number(vip['median_ms'])} ({_number(min(times))}–{_number(max(times))})"
        lines.append(f"| VIP repair after deletion | ms | {ours} | {others} | ≤ 100 ms"
                     f"{' ✓' if vip['max_ms'] <= 100 else ' ✗'} (Go sidecar: periodic 1-min sync, modelled "
                     f"median {vip['periodic_sync_model_median_ms']:,.0f}, max {vip['periodic_sync_model_max_ms']:,.0f}) |")  # fmt: skip
    elif vip is not None:
        lines.append(
            f"| VIP repair after deletion | ms | not measured: {vip.get('skipped', '?')} | {others} | ≤ 100 ms |"
        )
    lines += ["", ENVOY_NOTE]
    monitoring = _monitoring_cost(summary)
    if monitoring:
        lines += ["", monitoring]
    return "\n".join(lines) + "\n"


def _monitoring_cost(summary: dict[str, Any]) -> str | None:
    """The monitoring A/B of one run: apiproxy's node CPU per tunnel with metrics and the access log, less
    apiproxy-nomon's (medians), where both were measured."""
    costs = []
    for key, what in (("cpu_per_tunnel_us", "new tunnel (setup)"), ("paced_cpu_us", "paced tunnel"),
                      ("storm_cpu_us", "storm tunnel")):  # fmt: skip
        variants = summary.get(key, {}).get("variants", {})
        if "apiproxy" in variants and "apiproxy-nomon" in variants:
            cost = variants["apiproxy"]["median"] - variants["apiproxy-nomon"]["median"]
            costs.append(f"{cost:.1f} µs per {what}")
    if not costs:
        return None
    return (f"Monitoring A/B (node CPU of apiproxy as deployed less `--metrics-address off --no-access-log`, "
            f"medians): {', '.join(costs)}; the issue's target is ≤ 8 µs per tunnel.")  # fmt: skip


def plot(summary: dict[str, Any], path: Path, warn: Callable[[str], None]) -> bool:
    """A bar chart of apiproxy/Envoy for the metrics with a target, the target marked. False if skipped."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        warn("matplotlib is not installed: no PNG plot (pip install -e '.[bench]' or pip install matplotlib)")
        return False
    rows = [row for row in summary.values() if row["target"] and row["ratios"]]
    labels = [row["label"] for row in rows]
    figure, axes = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    height = 0.38
    for offset, envoy, colour in (
        (-height / 2, "envoy-c1", "tab:blue"),
        (height / 2, "envoy-c2", "tab:orange"),
    ):
        values = [row["ratios"].get(envoy, {}).get("ratio", 0.0) for row in rows]
        axes.barh([i + offset for i in range(len(rows))], values, height, label=f"apiproxy / {NAMES[envoy]}",
                  color=colour)  # fmt: skip
    for i, row in enumerate(rows):
        target = float(row["target"].split()[1].rstrip("×"))
        axes.plot([target, target], [i - 0.45, i + 0.45], color="black", linewidth=2)
    axes.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    axes.set_yticks(range(len(rows)), labels)
    axes.invert_yaxis()
    axes.set_xlabel("ratio apiproxy / Envoy (black bar: the issue's target; ≥ for throughput, ≤ otherwise)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
