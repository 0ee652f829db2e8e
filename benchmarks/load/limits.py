"""What one machine can hold open: descriptors (RLIMIT_NOFILE, raised as far as allowed first) and local
ports towards one target address (ip_local_port_range). A scenario that cannot fit is refused with one
line saying what to change, instead of failing part-way with EMFILE or EADDRNOTAVAIL.
"""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.procstat import raise_nofile

from .plan import Plan

# Descriptors a worker needs besides its tunnels: the loop, pipes, stdio, the TLS library's files.
_RESERVED_DESCRIPTORS = 64


class LimitError(Exception):
    """The scenario does not fit on this machine; `str()` is the one line for the user."""


def local_ports() -> int:
    """How many local ports the kernel hands out for connections (28,232 by default)."""
    try:
        low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 28232
    return high - low + 1


def in_flight_budget(plan: Plan) -> int:
    """Raises RLIMIT_NOFILE and checks that the scenario's open tunnels fit; returns how many tunnels one
    worker may have open at once (the cap of an open-loop schedule that the target falls behind)."""
    nofile = raise_nofile()
    scenario = plan.scenario
    per_worker_limit = nofile - _RESERVED_DESCRIPTORS
    ports = local_ports()
    shards = plan.shard.count
    held = scenario.tunnels()
    if held:
        on_this_machine = math.ceil(held / shards)
        per_worker = math.ceil(on_this_machine / plan.workers)
        what = (
            f"{scenario.kind} {held:,}" if scenario.kind in ("storm", "hold") else f"--connections {held:,}"
        )
        spread = f" with --shard over {shards} machines" if shards > 1 else ""
        if per_worker > per_worker_limit:
            raise LimitError(
                f"{what}: {per_worker:,} tunnels open at once per worker{spread} need more descriptors than "
                f"RLIMIT_NOFILE allows ({nofile:,}): raise it (ulimit -n), or use more --workers or --shard I/N"
            )
        if on_this_machine > ports:
            raise LimitError(
                f"{what}: {on_this_machine:,} tunnels open at once from this machine{spread} need more local "
                f"ports than net.ipv4.ip_local_port_range has ({ports:,}): spread it with --shard I/N over more machines"
            )
    # An open-loop schedule may have up to rate x timeout tunnels in flight; cap it by what fits.
    return max(1, min(per_worker_limit, ports // plan.workers))
