"""What the figures were measured on: CPU count and model, kernel, load, and the versions involved."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

from lab.gateway import envoy_binary


def _first_line(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except OSError as error:
        return f"unavailable ({error})"
    return ((done.stdout or done.stderr).strip().splitlines() or [""])[0]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "apiproxy": _version("apiproxy"),
        "uvloop": _version("uvloop"),
        "envoy": _first_line([envoy_binary(), "--version"]).split("version:")[-1].strip(),
        "iperf3": _first_line(["iperf3", "--version"]),
        "wrk": _first_line(["wrk", "--version"]),
    }
