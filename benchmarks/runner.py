"""One pass of every workload against one node-proxy variant, and the repetition over runs and variants.
Variants are interleaved within each run, so drift on the shared machine spreads over all of them."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import loads
from .procstat import anon_bytes, cpu_seconds, rss_bytes
from .topology import DEST_HTTP, DEST_IPERF, DEST_TLS, Backends, start_node


@dataclass(frozen=True)
class Settings:
    runs: int = 3
    bulk_seconds: float = 5.0
    setup_seconds: float = 5.0
    setup_concurrency: int = 32
    setup_max_tunnels: int = 40000
    # New tunnels at this rate, open loop, for this long: below what this machine saturates at (~2,000-4,000
    # tunnels/s through any of the proxies on 2 cores), so every process gets the CPU it asks for.
    paced_rate: float = 1000.0
    paced_seconds: float = 4.0
    keepalive_seconds: float = 5.0
    keepalive_connections: int = 32
    idle_counts: tuple[int, int] = (1000, 10000)
    vip_deletions: int = 7
    storm_clients: int = 2000
    storm_timeout: float = 30.0  # per tunnel, from the storm's start: beyond it a tunnel counts as failed

    @classmethod
    def quick(cls) -> Settings:
        return cls(runs=1, bulk_seconds=1.0, setup_seconds=1.0, setup_concurrency=16, setup_max_tunnels=5000,
                   paced_rate=200.0, paced_seconds=1.0, keepalive_seconds=1.0, keepalive_connections=16, idle_counts=(200, 1000), vip_deletions=3,
                   storm_clients=100)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _cpu(pid: int | None) -> float:
    return cpu_seconds(pid) if pid is not None else 0.0


def _settle(pid: int | None, seconds: float = 1.0) -> int | None:
    time.sleep(seconds)
    return rss_bytes(pid) if pid is not None else None


def one_pass(variant: str, backends: Backends, settings: Settings, loop: asyncio.AbstractEventLoop,
             say: Callable[[str], None] = progress) -> dict[str, Any]:  # fmt: skip
    figures: dict[str, Any] = {"variant": variant}
    node = start_node(variant, DEST_IPERF, backends)
    try:
        # The seed gateway's CPU per GB too: it is shared by every node, so cost pushed onto it counts.
        for key, streams, reverse in (("bulk_1", 1, False), ("bulk_8", 8, False), ("bulk_1r", 1, True)):
            before, gateway_before = _cpu(node.pid), _cpu(backends.gateway.pid)
            result: dict[str, Any] = dict(loads.bulk(node.port, streams, settings.bulk_seconds, reverse))
            cpu = _cpu(node.pid) - before if node.pid else None
            gigabytes = result["bytes"] / 1e9
            result["cpu_s"] = cpu
            result["cpu_s_per_gb"] = cpu / gigabytes if cpu is not None else None
            # The no-proxy variant dials the backend: no gateway on its path.
            result["gateway_cpu_s_per_gb"] = (
                (_cpu(backends.gateway.pid) - gateway_before) / gigabytes if node.pid else None
            )
            figures[key] = result
            say(f"  {variant}: bulk {streams} stream(s){' reverse' if reverse else ''} {result['gbps']:.2f} Gbit/s"
                + (f", {result['cpu_s_per_gb']:.2f} CPU s/GB" if cpu is not None else "")
                + (f", gateway {result['gateway_cpu_s_per_gb']:.2f} CPU s/GB" if node.pid else ""))  # fmt: skip
    finally:
        node.stop()

    node = start_node(variant, DEST_HTTP, backends)
    try:
        rss_start = _settle(node.pid, 0.5)
        before = _cpu(node.pid)
        setup = loop.run_until_complete(loads.setup(node.port, settings.setup_concurrency, settings.setup_seconds,
                                                    settings.setup_max_tunnels))  # fmt: skip
        cpu = _cpu(node.pid) - before if node.pid else None
        # The CPU the proxy took while the machine was saturated (cores): under the closed-loop setup load
        # every process has work waiting, so each gets about its share of the cores, and CPU per tunnel is
        # that share divided by the rate the whole path reached. The paced load below measures the cost.
        figures["setup"] = {**setup.figures(), "cpu_s": cpu,
                            "cpu_us_per_tunnel": cpu / setup.tunnels * 1e6 if cpu is not None and setup.tunnels else None,
                            "cpu_cores": cpu / setup.seconds if cpu is not None else None}  # fmt: skip
        s = figures["setup"]
        say(f"  {variant}: setup {s['per_s']:.0f} tunnels/s, p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms"
            + (f", {s['cpu_us_per_tunnel']:.0f} CPU µs/tunnel ({s['cpu_cores']:.2f} cores)" if s["cpu_us_per_tunnel"] is not None else "")
            + (f", {s['failures']} failures" if s["failures"] else ""))  # fmt: skip

        _settle(node.pid, 0.5)
        before = _cpu(node.pid)
        paced = loads.paced(node.port, settings.paced_rate, settings.paced_seconds, timeout=10.0)
        cpu = _cpu(node.pid) - before if node.pid else None
        paced["cpu_us_per_tunnel"] = cpu / paced["ok"] * 1e6 if cpu is not None and paced["ok"] else None
        figures["paced"] = paced
        say(f"  {variant}: paced setup at {paced['achieved_rate']:.0f} tunnels/s, p50 {paced['p50_ms'] or 0:.2f} ms, "
            f"p99 {paced['p99_ms'] or 0:.2f} ms"
            + (f", {paced['cpu_us_per_tunnel']:.0f} CPU µs/tunnel" if paced["cpu_us_per_tunnel"] is not None else "")
            + (f", {paced['failures']} failures" if paced["failures"] else "")
            + ("" if not paced["generator_limited"] else f" ({paced['generator']})"))  # fmt: skip

        before = _cpu(node.pid)
        keep: dict[str, Any] = dict(
            loads.keepalive(node.port, settings.keepalive_connections, settings.keepalive_seconds)
        )
        cpu = _cpu(node.pid) - before if node.pid else None
        keep["cpu_us_per_request"] = (
            cpu / (keep["rps"] * settings.keepalive_seconds) * 1e6 if cpu is not None else None
        )
        figures["keepalive"] = keep
        say(
            f"  {variant}: keep-alive {keep['rps']:.0f} req/s, p50 {keep['p50_ms']:.2f} ms, p99 {keep['p99_ms']:.2f} ms"
        )

        # Memory per idle tunnel: what holding them adds to the process's anonymous memory, from a reading
        # right before they are opened (after the loads above, so it is not their heap that is counted).
        # The VmRSS difference from the start is kept beside it, as reported before.
        idle = loads.IdleTunnels(node.port)
        memory: dict[str, Any] = {"rss_start": rss_start}
        _settle(node.pid)
        anon_before = anon_bytes(node.pid) if node.pid is not None else None
        memory["anon_before"] = anon_before
        try:
            for count in settings.idle_counts:
                try:
                    loop.run_until_complete(idle.grow_to(count))
                except RuntimeError as error:  # recorded, so one variant's limit does not end the run
                    memory["error"] = str(error)
                    say(f"  {variant}: {error}")
                    break
                rss = _settle(node.pid)
                anon = anon_bytes(node.pid) if node.pid is not None else None
                memory[f"rss_{count}"] = rss
                memory[f"anon_{count}"] = anon
                memory[f"bytes_per_tunnel_{count}"] = (
                    (anon - anon_before) / count if anon is not None and anon_before is not None else None
                )
                memory[f"rss_bytes_per_tunnel_{count}"] = (
                    (rss - rss_start) / count if rss and rss_start else None
                )
        finally:
            idle.close()
            loop.run_until_complete(asyncio.sleep(0.5))
        figures["memory"] = memory
        if node.pid is not None and "error" not in memory:
            say(
                f"  {variant}: RSS at start {memory['rss_start'] / 2**20:.1f} MiB, "
                + ", ".join(
                    f"{memory[f'bytes_per_tunnel_{n}'] / 1024:.1f} KiB/tunnel at {n}"
                    for n in settings.idle_counts
                )
            )
    finally:
        node.stop()

    node = start_node(variant, DEST_TLS, backends)
    try:
        assert backends.ca_file is not None
        _settle(node.pid, 0.5)
        before = _cpu(node.pid)
        storm = loads.storm(node.port, settings.storm_clients, backends.ca_file, settings.storm_timeout)
        cpu = _cpu(node.pid) - before if node.pid else None
        storm["cpu_us_per_tunnel"] = cpu / storm["ok"] * 1e6 if cpu is not None and storm["ok"] else None
        figures["storm"] = storm
        say(f"  {variant}: storm of {storm['clients']:,}: all served after {storm['served_s'] or 0:.2f} s, "
            f"p50 {storm['p50_ms'] or 0:.1f} ms, p99 {storm['p99_ms'] or 0:.1f} ms, max {storm['max_ms'] or 0:.1f} ms, "
            f"{storm['failures']} failures" + ("" if not storm["generator_limited"] else f" ({storm['generator']})"))  # fmt: skip
    finally:
        node.stop()
    return figures


def run_all(variants: tuple[str, ...], backends: Backends, settings: Settings,
            loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:  # fmt: skip
    passes: list[dict[str, Any]] = []
    for run in range(settings.runs):
        for variant in variants:
            progress(f"run {run + 1}/{settings.runs}: {variant}")
            figures = one_pass(variant, backends, settings, loop)
            passes.append({"run": run + 1, **figures})
    return passes
