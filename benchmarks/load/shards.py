"""Beyond one machine: `--shard I/N` gives generator I every N-th unit of the one schedule, and `load merge`
adds the shards' results (their results.json, or the lines `--log-results` printed into a log) into one
report — histograms merge exactly, counts and rates add — after checking that they are shards of the same
run (same scenario and target) and saying which are missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from apiproxy.config import ConfigError

from .plan import Shard
from .record import Recorder
from .report import FORMAT, RESULTS_LINE_PREFIX, document

_SHARD = re.compile(r"(\d+)/(\d+)")
MAX_SHARDS = 10000


def parse_shard(option: str, value: str) -> Shard:
    match = _SHARD.fullmatch(value.strip())
    if match is None or not 0 <= int(match[1]) < int(match[2]) <= MAX_SHARDS:
        raise ConfigError(
            option, value, f"I/N: shard I of N generators, 0 <= I < N <= {MAX_SHARDS} (e.g. 0/4)"
        )
    return Shard(int(match[1]), int(match[2]))


class MergeError(Exception):
    """The inputs are not shards of one run; `str()` is the one line for the user."""


def _read(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """A shard's directory, its results.json, or a log holding `--log-results` lines (`kubectl logs` of
    the load Job's pods, any number of shards in one file): (where, results) for each shard found."""
    file = path / "results.json" if path.is_dir() else path
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise MergeError(f"{file}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    found: list[tuple[str, Any]] = []
    try:
        if text.lstrip().startswith("{"):
            found.append((str(file), json.loads(text)))
        else:
            for number, line in enumerate(text.splitlines(), 1):
                # kubectl logs --prefix puts "[pod/NAME/load] " in front: the marker may follow it.
                start = line.find(RESULTS_LINE_PREFIX)
                if start >= 0:
                    found.append((f"{file}:{number}", json.loads(line[start + len(RESULTS_LINE_PREFIX) :])))
    except ValueError as error:
        raise MergeError(f"{file}: not JSON ({error})") from None
    if not found:
        raise MergeError(
            f"{file}: neither a results.json nor a log with {RESULTS_LINE_PREFIX.strip()!r} lines"
        )
    for where, results in found:
        if not isinstance(results, dict) or results.get("format") != FORMAT:
            raise MergeError(f"{where}: not a results.json of `python -m benchmarks load` ({FORMAT})")
    return found


def _run_identity(results: dict[str, Any]) -> dict[str, Any]:
    """What shards of one run share: the scenario, the target as given (not its resolved address), timeout."""
    settings = results["settings"]
    target = {key: value for key, value in settings["target"].items() if key != "address"}
    return {"scenario": settings["scenario"], "target": target, "timeout_s": settings["timeout_s"]}


def merge(paths: list[Path]) -> dict[str, Any]:
    read = [found for path in paths for found in _read(path)]
    first_file, first = read[0]
    identity = _run_identity(first)
    recorder = Recorder(first["unit"])
    shards: list[dict[str, Any]] = []
    for file, results in read:
        if _run_identity(results) != identity:
            raise MergeError(f"{file} is {results['description']!r}, {first_file} is {first['description']!r}: "
                             "only shards of one run merge")  # fmt: skip
        recorder.merge(Recorder.from_json(results))
        shards += results["shards"]
    # Shards ran on clocks of their own: a combined span of start times would mean nothing.
    recorder.first_start = recorder.last_start = recorder.last_setup_answer = None
    names = [shard["shard"] for shard in shards]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise MergeError(f"shard {', '.join(duplicates)} given more than once: each shard's results once")
    counts = {int(name.split("/")[1]) for name in names}
    if len(counts) > 1:
        raise MergeError(f"shards {', '.join(names)} split the run in different ways: one N for all")
    (count,) = counts
    merged = document({**first["settings"], "shard": ", ".join(names)}, recorder, shards)
    merged["missing_shards"] = [f"{i}/{count}" for i in range(count) if f"{i}/{count}" not in names]
    return merged
