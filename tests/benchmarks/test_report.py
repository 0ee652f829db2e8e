"""Summaries, ratios and the Markdown table from fixed figures, without sockets."""

from __future__ import annotations

from typing import Any

from benchmarks.report import markdown, summarize

VARIANTS = ("apiproxy", "envoy-c1", "envoy-c2", "none")


def _pass(variant: str, gbps: float, rss: float | None) -> dict[str, Any]:
    return {"variant": variant, "bulk_1": {"gbps": gbps, "cpu_s_per_gb": None if rss is None else 1.0},
            "memory": {"rss_start": rss}}  # fmt: skip


def test_medians_min_max_and_ratios_against_each_envoy() -> None:
    passes = [
        _pass("apiproxy", 6.0, 30 * 2**20), _pass("apiproxy", 5.0, 30 * 2**20), _pass("apiproxy", 9.0, 30 * 2**20),
        _pass("envoy-c1", 4.0, 60 * 2**20), _pass("envoy-c2", 5.0, 40 * 2**20), _pass("none", 12.0, None),
    ]  # fmt: skip
    summary = summarize(passes, VARIANTS, (1000, 10000))
    bulk = summary["bulk_1_gbps"]
    assert bulk["variants"]["apiproxy"] == {"median": 6.0, "min": 5.0, "max": 9.0, "runs": [6.0, 5.0, 9.0]}
    assert bulk["ratios"]["envoy-c1"] == {"ratio": 1.5, "meets_target": True}
    assert bulk["ratios"]["envoy-c2"] == {"ratio": 1.2, "meets_target": False}
    rss = summary["rss_start_mib"]
    assert "none" not in rss["variants"]
    assert rss["ratios"]["envoy-c1"] == {"ratio": 0.5, "meets_target": True}
    assert rss["ratios"]["envoy-c2"]["meets_target"] is False
    assert summary["setup_per_s"]["variants"] == {}

    table = markdown(summary, {"skipped": "needs root"}, runs=3)
    assert (
        "| Bulk throughput, 1 stream | Gbit/s | 6.00 (5.00–9.00) | 4.00 | 5.00 | 12.0 | 1.50× ✓ | 1.20× ✗ | ≥ 1.3× |"
        in table
    )
    assert "| RSS at start | MiB | 30.0 (30.0–30.0) | 60.0 | 40.0 | – | 0.50× ✓ | 0.75× ✗ | ≤ 0.5× |" in table
    assert "not measured: needs root" in table
    assert "circuit breakers raised to 11,000" in table


def test_storm_rows_name_the_storm_and_have_no_target() -> None:
    passes = [
        {"variant": v, "storm": {"served_s": s, "p99_ms": 900.0, "failures": 0, "cpu_us_per_tunnel": c}}
        for v, s, c in (("apiproxy", 4.0, 300.0), ("envoy-c1", 5.0, 400.0), ("envoy-c2", 4.5, 350.0),
                        ("none", 3.0, None))
    ]  # fmt: skip
    summary = summarize(passes, VARIANTS, (1000, 10000), 2000)
    served = summary["storm_served_s"]
    assert served["label"] == "Reconnect storm (2,000 clients): all served after"
    assert served["ratios"]["envoy-c1"] == {"ratio": 0.8, "meets_target": None}
    assert summary["storm_failures"]["ratios"] == {}  # nothing to divide by
    assert set(summary["storm_cpu_us"]["variants"]) == {"apiproxy", "envoy-c1", "envoy-c2"}
    assert (
        "| Reconnect storm (2,000 clients): failed tunnels | tunnels | 0.00 | 0.00 | 0.00 | 0.00 |"
        in markdown(summary, None, 1)
    )


def test_the_monitoring_ab_has_a_column_and_a_line_only_when_measured() -> None:
    def setup(variant: str, cpu: float) -> dict[str, Any]:
        return {"variant": variant, "setup": {"cpu_us_per_tunnel": cpu}}

    passes = [setup("apiproxy", 200.0), setup("apiproxy-nomon", 194.5), setup("envoy-c1", 250.0)]
    with_ab = markdown(summarize(passes, (*VARIANTS, "apiproxy-nomon"), (1000, 10000)), {"skipped": "x"}, 1)
    assert (
        "| Metric | Unit | apiproxy | Envoy c1 | Envoy c2 | no proxy | apiproxy, monitoring off |" in with_ab
    )
    assert "| Node CPU per tunnel | µs | 200 | 250 | – | – | 194 | 0.80× ✓ | – | ≤ 0.85× |" in with_ab
    assert (
        "| VIP repair after deletion | ms | not measured: x | – | – | – | – | – | – | ≤ 100 ms |" in with_ab
    )
    assert "Monitoring A/B (" in with_ab and ": 5.5 µs per new tunnel (setup);" in with_ab
    without = markdown(summarize(passes[::2], VARIANTS, (1000, 10000)), None, 1)
    assert "monitoring off" not in without and "Monitoring A/B" not in without


def test_paced_rows_name_the_rate_and_have_no_target_and_the_cores_row_is_the_proxys() -> None:
    passes = [
        {"variant": v, "setup": {"cpu_cores": cores}, "paced": {"p99_ms": 3.0, "cpu_us_per_tunnel": cpu}}
        for v, cores, cpu in (("apiproxy", 0.5, 270.0), ("envoy-c1", 0.5, 300.0), ("envoy-c2", 0.6, 330.0),
                              ("none", None, None))
    ]  # fmt: skip
    summary = summarize(passes, VARIANTS, (1000, 10000), 2000, 1000.0)
    cpu = summary["paced_cpu_us"]
    assert cpu["label"] == "Paced setup (1,000 tunnels/s): node CPU per tunnel"
    assert cpu["ratios"]["envoy-c1"] == {"ratio": 0.9, "meets_target": None}
    assert set(cpu["variants"]) == {"apiproxy", "envoy-c1", "envoy-c2"}
    assert set(summary["paced_p99_ms"]["variants"]) == set(VARIANTS)
    assert set(summary["setup_cpu_cores"]["variants"]) == {"apiproxy", "envoy-c1", "envoy-c2"}
    table = markdown(summary, None, 1)
    assert (
        "| Paced setup (1,000 tunnels/s): node CPU per tunnel | µs | 270 | 300 | 330 | – | 0.90× | 0.82× |  |"
        in table
    )
    assert "| Node CPU used under the setup load | cores | 0.50 | 0.50 | 0.60 | – |" in table
