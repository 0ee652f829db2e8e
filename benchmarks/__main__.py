"""`python -m benchmarks [--quick]`: start the loopback topology, run every workload against each node
proxy variant (interleaved, repeated), measure the VIP repair when root, and write results.md,
results.json and ratios.png to --output. Progress goes to stderr, the Markdown table to stdout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvloop

from . import machine, report, vip
from .procstat import raise_nofile
from .runner import Settings, progress, run_all
from .topology import OPTIONAL_VARIANTS, VARIANTS, start_backends


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="one run, short loads, small counts (< 1 minute)"
    )
    parser.add_argument("--runs", type=int, help="repetitions of every workload (default 3; --quick 1)")
    parser.add_argument(
        "--output", type=Path, default=Path("bench-results"), help="directory for the results"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated node proxies to measure, of {','.join(VARIANTS + OPTIONAL_VARIANTS)} "
                             "(apiproxy-nomon: monitoring off, for the monitoring A/B)")  # fmt: skip
    parser.add_argument("--no-vip", action="store_true", help="skip the VIP repair measurement")
    arguments = parser.parse_args(argv)
    variants = tuple(v for v in arguments.variants.split(",") if v)
    unknown = [v for v in variants if v not in VARIANTS + OPTIONAL_VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants {arguments.variants!r}: expected a comma-separated subset of "
                     f"{','.join(VARIANTS + OPTIONAL_VARIANTS)}")  # fmt: skip
    if arguments.runs is not None and not 1 <= arguments.runs <= 20:
        parser.error(f"--runs {arguments.runs}: expected a number of repetitions from 1 to 20")
    arguments.variants = variants
    return arguments


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["load"]:  # the load generator for a running proxy or gateway: benchmarks/load
        from .load.cli import main as load

        return load(given[1:])
    arguments = _arguments(argv)
    settings = Settings.quick() if arguments.quick else Settings()
    if arguments.runs is not None:
        settings = replace(settings, runs=arguments.runs)
    # Each idle tunnel holds two descriptors in a proxy; stay under the limit we can get.
    nofile = raise_nofile()
    large = min(settings.idle_counts[1], (nofile - 500) // 2)
    settings = replace(settings, idle_counts=(settings.idle_counts[0], large))
    arguments.output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict[str, Any] = {"machine": machine.describe(), "settings": settings.as_dict(),
                               "variants": list(arguments.variants), "nofile_limit": nofile}  # fmt: skip
    progress(f"machine: {results['machine']['cpus']} CPUs, kernel {results['machine']['kernel']}, "
             f"Envoy {results['machine']['envoy']}, load {results['machine']['load_average_at_start'][0]:.2f}")  # fmt: skip
    backends = start_backends()
    loop = uvloop.new_event_loop()
    try:
        results["passes"] = run_all(arguments.variants, backends, settings, loop)
    finally:
        loop.close()
        backends.stop()
    if not arguments.no_vip:
        reason = vip.unavailable()
        if reason is None:
            progress(f"VIP repair: {settings.vip_deletions} deletions in a network namespace")
            results["vip"] = vip.measure(settings.vip_deletions)
            progress(f"  apiproxy: VIP back after median {results['vip']['median_ms']:.1f} ms, "
                     f"max {results['vip']['max_ms']:.1f} ms")  # fmt: skip
        else:
            results["vip"] = {"skipped": reason}
            progress(f"VIP repair skipped: {reason}")
    results["summary"] = report.summarize(
        results["passes"],
        arguments.variants,
        settings.idle_counts,
        settings.storm_clients,
        settings.paced_rate,
    )
    results["seconds"] = time.time() - started
    table = report.markdown(results["summary"], results.get("vip"), settings.runs)
    (arguments.output / "results.md").write_text(table)
    (arguments.output / "results.json").write_text(json.dumps(results, indent=1))
    if report.plot(results["summary"], arguments.output / "ratios.png", progress):
        progress(f"wrote {arguments.output / 'ratios.png'}")
    progress(f"wrote {arguments.output / 'results.md'} and results.json in {results['seconds']:.0f} s")
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
