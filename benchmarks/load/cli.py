"""`python -m benchmarks load SCENARIO ...` (also `python -m benchmarks.load`): the command line, checked
in full before any load starts — a value that cannot be used is one line naming it and exit 2.

Exit status: 0 the run completed; 1 nothing succeeded (e.g. the target refused every tunnel: the report
names the failure) or a worker failed; 2 bad input or a scenario that does not fit this machine;
130 interrupted by Ctrl-C (the report covers what ran).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import ssl
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from apiproxy.config import (
    ConfigError,
    is_hostname,
    parse_authority,
    parse_connect_header_name,
    parse_duration,
    parse_endpoint,
    parse_header_value,
    parse_int,
    parse_size,
)

from . import lab, report, workers
from .lab import VARIANTS as LAB_VARIANTS
from .limits import LimitError, in_flight_budget
from .plan import DEFAULT_SNI, Plan, Scenario, Target
from .shards import MergeError, merge, parse_shard

PROG = "python -m benchmarks load"
MAX_UNITS = 10_000_000
MAX_RATE = 1_000_000.0
MAX_DURATION = 24 * 3600.0
# A request path: origin-form, visible ASCII.
_PATH = re.compile(r"/[\x21-\x7e]*")
_DURATION_HELP = "how long the scenario runs (Go units: 30s, 5m, 1h)"


class UsageError(Exception):
    """`str()` is the one line shown to the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _target_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("target (one of --target, --gateway or --lab)")
    group.add_argument(
        "--target", metavar="HOST:PORT", help="a node proxy (VIP:443): TCP, then TLS through it"
    )
    group.add_argument("--gateway", metavar="HOST:PORT",
                       help="the seed gateway: CONNECT with the destination header, then TLS through it")  # fmt: skip
    group.add_argument(
        "--destination", metavar="VALUE", help="with --gateway: the destination header's value"
    )
    group.add_argument("--destination-header", metavar="NAME", action="append",
                       help="with --gateway: the header naming the destination (default X-Gardener-Destination; repeatable)")  # fmt: skip
    group.add_argument("--connect-authority", metavar="HOST:PORT",
                       help="with --gateway: the CONNECT request-target and Host (default: the gateway's host, port 443)")  # fmt: skip
    group.add_argument("--lab", metavar="VARIANT",
                       help=f"start the benchmarks' loopback topology and load its node proxy VARIANT, or its gateway ({', '.join(LAB_VARIANTS)}; plain HTTP)")  # fmt: skip
    group.add_argument(
        "--plain", action="store_true", help="no TLS through the tunnel (echo or HTTP backends in a lab)"
    )
    group.add_argument(
        "--sni", metavar="NAME", help=f"TLS server name to send and verify (default {DEFAULT_SNI})"
    )
    group.add_argument("--ca", metavar="FILE", help="CA certificates (PEM) to verify the API server with")
    group.add_argument("--insecure", action="store_true", help="do not verify the API server's certificate")
    group.add_argument("--path", default="/version", help="the request each tunnel sends (default /version)")
    run = parser.add_argument_group("run")
    run.add_argument("--timeout", default="10s", help="per tunnel setup, request or probe (default 10s)")
    run.add_argument("--workers", help="worker processes (default: the usable CPUs)")
    run.add_argument(
        "--shard", default="0/1", metavar="I/N", help="run shard I of N generators (default 0/1)"
    )
    run.add_argument("--output", type=Path, default=Path("bench-results/load"),
                     help="directory for the results (default bench-results/load)")  # fmt: skip
    run.add_argument("--log-results", action="store_true",
                     help=f"also print results.json on one stdout line after {report.RESULTS_LINE_PREFIX.strip()!r}")  # fmt: skip


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Open-loop load on a node proxy or the seed gateway. "
                     "See benchmarks/README.md, 'Load testing'.")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True, metavar="SCENARIO", parser_class=_Parser)
    storm = commands.add_parser("storm", help="N tunnels opened at once, as fast as the target accepts")
    storm.add_argument("count", metavar="N", help="tunnels")
    rate = commands.add_parser("rate", help="open loop: R new tunnels per second for --duration")
    rate.add_argument("rate", metavar="R", help="new tunnels per second")
    rate.add_argument("--duration", required=True, help=_DURATION_HELP)
    hold = commands.add_parser("hold", help="N tunnels held open for --duration, each probed periodically")
    hold.add_argument("count", metavar="N", help="tunnels")
    hold.add_argument("--duration", required=True, help=_DURATION_HELP)
    hold.add_argument("--probe-interval", default="5s", help="time between a tunnel's probes (default 5s)")
    requests = commands.add_parser(
        "requests", help="open loop: --rate HTTP requests/s over --connections kept tunnels"
    )
    requests.add_argument("--connections", required=True, help="tunnels kept open for the requests")
    requests.add_argument("--rate", required=True, help="requests per second")
    requests.add_argument("--duration", required=True, help=_DURATION_HELP)
    bulk = commands.add_parser(
        "bulk", help="--connections tunnels streaming to an echo backend for --duration"
    )
    bulk.add_argument("--connections", default="1", help="tunnels streaming at once (default 1)")
    bulk.add_argument("--duration", required=True, help=_DURATION_HELP)
    bulk.add_argument("--block-size", default="64KiB", help="bytes per write (default 64KiB)")
    for scenario in (storm, rate, hold, requests, bulk):
        _target_options(scenario)
    combine = commands.add_parser("merge", help="merge the results.json of shards into one report")
    combine.add_argument(
        "inputs", nargs="+", type=Path, metavar="DIR", help="a shard's output directory (or its results.json)"
    )
    combine.add_argument(
        "--output",
        type=Path,
        default=Path("bench-results/load-merged"),
        help="directory for the merged results (default bench-results/load-merged)",
    )
    return parser


def _rate(option: str, value: str) -> float:
    try:
        rate = float(value.removesuffix("/s"))
    except ValueError:
        rate = math.nan
    if not (math.isfinite(rate) and 0 < rate <= MAX_RATE):
        raise ConfigError(option, value, f"a rate per second above 0 and at most {MAX_RATE:,.0f}")
    return rate


def _duration(option: str, value: str) -> float:
    seconds = parse_duration(option, value)
    if seconds > MAX_DURATION:
        raise ConfigError(option, value, "a duration of at most 24h")
    return seconds


def _scenario(args: argparse.Namespace) -> Scenario:
    kind = args.command
    fields: dict[str, Any] = {"kind": kind}
    if kind in ("storm", "hold"):
        fields["count"] = parse_int(kind, args.count, minimum=1, maximum=MAX_UNITS)
    if kind in ("rate", "requests"):
        fields["rate"] = _rate(kind if kind == "rate" else "--rate", args.rate)
    if kind != "storm":
        fields["duration"] = _duration("--duration", args.duration)
    if kind in ("requests", "bulk"):
        fields["connections"] = parse_int("--connections", args.connections, minimum=1, maximum=MAX_UNITS)
    if kind == "hold":
        fields["probe_interval"] = parse_duration("--probe-interval", args.probe_interval)
    if kind == "bulk":
        fields["block_size"] = parse_size("--block-size", args.block_size, minimum=1, maximum=16 << 20)
    scenario = Scenario(**fields)
    if scenario.units() > MAX_UNITS:
        raise UsageError(f"{scenario.describe()}: {scenario.units():,} units is more than one run schedules "
                         f"({MAX_UNITS:,}); lower the rate or the duration")  # fmt: skip
    return scenario


def _resolve(option: str, host: str, port: int) -> str:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"{option}: cannot resolve {host!r}: {error.strerror}") from None
    return str(found[0][4][0])


def _lab_target(args: argparse.Namespace) -> Target:
    """A stand-in until the topology is started (see `main`); the options it makes meaningless refused."""
    if args.lab not in LAB_VARIANTS:
        raise ConfigError("--lab", args.lab, f"one of {', '.join(LAB_VARIANTS)}")
    for flag, given in (("--destination", args.destination), ("--destination-header", args.destination_header),
                        ("--connect-authority", args.connect_authority), ("--ca", args.ca),
                        ("--insecure", args.insecure), ("--sni", args.sni)):  # fmt: skip
        if given:
            raise UsageError(
                f"{flag}: not with --lab (its backend is plain HTTP behind a gateway it configures)"
            )
    return Target("gateway" if args.lab == "gateway" else "node", "127.0.0.1", 1, "127.0.0.1", tls=False,
                  path=args.path, lab=args.lab)  # fmt: skip


def _target(args: argparse.Namespace) -> Target:
    if [args.target, args.gateway, args.lab].count(None) != 2:
        raise UsageError(
            "expected one of --target HOST:PORT (a node proxy), --gateway HOST:PORT (the seed gateway) or --lab VARIANT"
        )
    if args.lab is not None:
        return _lab_target(args)
    if args.target is not None:
        for flag, given in (("--destination", args.destination), ("--destination-header", args.destination_header),
                            ("--connect-authority", args.connect_authority)):  # fmt: skip
            if given:
                raise UsageError(f"{flag}: only with --gateway (a node proxy sends its own CONNECT)")
    if args.plain:
        for flag, given in (("--ca", args.ca), ("--insecure", args.insecure), ("--sni", args.sni)):
            if given:
                raise UsageError(f"{flag}: not with --plain (no TLS)")
    if args.ca and args.insecure:
        raise UsageError("--ca and --insecure: one or the other (verify with the CA, or do not verify)")
    option = "--target" if args.target is not None else "--gateway"
    endpoint = parse_endpoint(option, args.target or args.gateway)
    fields: dict[str, Any] = {"kind": "node" if args.target is not None else "gateway", "host": endpoint.host,
                              "port": endpoint.port, "tls": not args.plain, "insecure": args.insecure}  # fmt: skip
    if args.gateway is not None:
        if args.destination is None:
            raise UsageError(
                "--gateway needs --destination VALUE (e.g. 'outbound|443||kube-apiserver.<namespace>.svc.cluster.local')"
            )
        fields["destination"] = parse_header_value("--destination", args.destination)
        names = args.destination_header or ["X-Gardener-Destination"]
        fields["destination_headers"] = tuple(
            parse_connect_header_name("--destination-header", name) for name in names
        )
        if args.connect_authority is not None:
            fields["connect_authority"] = parse_authority("--connect-authority", args.connect_authority)
    if args.sni is not None:
        if not is_hostname(args.sni):
            raise ConfigError("--sni", args.sni, "a DNS name")
        fields["sni"] = args.sni
    if args.ca is not None:
        try:
            ssl.create_default_context(cafile=args.ca)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError("--ca", args.ca, f"a readable PEM file of CA certificates ({error})") from None
        fields["ca_file"] = str(Path(args.ca).resolve())
    if not _PATH.fullmatch(args.path):
        raise ConfigError("--path", args.path, "a request path starting with / (visible ASCII, no spaces)")
    fields["path"] = args.path
    fields["address"] = _resolve(option, endpoint.host, endpoint.port)
    return Target(**fields)


def _workers(args: argparse.Namespace, scenario: Scenario, shards: int) -> int:
    usable = len(os.sched_getaffinity(0))
    asked = usable if args.workers is None else parse_int("--workers", args.workers, minimum=1, maximum=256)
    if scenario.kind in ("requests", "bulk"):
        if scenario.connections < shards:
            raise UsageError(
                f"--connections {scenario.connections}: each of the {shards} shards needs at least one"
            )
        # Every worker of every shard needs a tunnel of its own.
        return min(asked, scenario.connections // shards)
    return max(1, min(asked, scenario.units() // shards))


def _plan(args: argparse.Namespace) -> Plan:
    scenario = _scenario(args)
    target = _target(args)
    shard = parse_shard("--shard", args.shard)
    if target.lab is not None and shard.count > 1:
        raise UsageError("--shard: not with --lab (each generator would start a topology of its own)")
    timeout = _duration("--timeout", args.timeout)
    return Plan(target, scenario, _workers(args, scenario, shard.count), shard, timeout)


def plan_for(argv: list[str]) -> Plan:
    """The plan a command line asks for, checked as `main` checks it (UsageError or ConfigError if not)."""
    return _plan(_parser().parse_args(argv))


def _output(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--output: cannot create {str(directory)!r}: {error.strerror or error}") from None


def _finish(results: dict[str, Any], args: argparse.Namespace) -> int:
    table = report.write(results, args.output, say)
    sys.stdout.write(table)
    if getattr(args, "log_results", False):
        sys.stdout.write(report.RESULTS_LINE_PREFIX + json.dumps(results, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    if results["interrupted"]:
        return 130
    if results["errors"]:
        return 1
    if results["ok"] == 0 and results["failed_total"] > 0:
        first = results["first_failure"]
        say(f"no {results['unit'][:-1]} succeeded: {first['kind']} in {first['phase']}: {first['detail']}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "merge":
            results = merge(args.inputs)
            _output(args.output)
            if results["missing_shards"]:
                say(
                    f"merged {len(results['shards'])} shard(s); missing: {', '.join(results['missing_shards'])}"
                )
            return _finish(results, args)
        plan = _plan(args)
        budget = in_flight_budget(plan)
        _output(args.output)
    except (UsageError, ConfigError, LimitError, MergeError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    if plan.target.lab is None:
        return _finish(_run(plan, budget), args)
    try:
        with lab.started(plan.target.lab) as target:
            results = _run(replace(plan, target=replace(target, path=plan.target.path)), budget)
    except lab.LabError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    return _finish(results, args)


def _run(plan: Plan, budget: int) -> dict[str, Any]:
    say(
        f"{plan.scenario.describe()} against {plan.target.describe()}; {plan.workers} worker(s), shard {plan.shard}"
    )
    return report.from_run(plan, workers.run(plan, budget, say))
