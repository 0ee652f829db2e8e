"""CPU seconds and resident memory of a process, read from /proc (Linux). The node proxy's cost per byte
and per tunnel is the difference of two readings around a workload."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of all the process's threads, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_nofile(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (children inherit it): 10,000 tunnels take 20,000 descriptors in a proxy. Root may
    raise the hard limit; others get their hard limit. Returns the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
