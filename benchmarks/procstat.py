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
    """Resident memory (VmRSS): the process's own memory and the pages of its files (code) it has touched."""
    return _status_kib(pid, "VmRSS:") * 1024


def anon_bytes(pid: int) -> int:
    """Resident anonymous memory (RssAnon): heap, stacks, buffers, without the pages of mapped files. What
    tunnels cost is here; VmRSS also moves with how many pages of libpython or libcrypto the kernel maps
    around each fault, which depends on the page cache at the time (seen: 0.9 MiB between two runs)."""
    return _status_kib(pid, "RssAnon:") * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


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
