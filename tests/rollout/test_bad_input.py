"""A handover socket that cannot be used is one line naming it and a non-zero exit, never a traceback: as
`apiproxy-envoy` takes it (APIPROXY_HANDOVER_SOCKET, or its own flag)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from benchmarks.topology import render_envoy
from lab.gateway import DESTINATION, free_port

from .nodes import APIPROXY_ENVOY


@pytest.fixture
def envoy_yaml(tmp_path: Path) -> Path:
    config = render_envoy(free_port(), free_port(), 9, tmp_path / "admin.socket", DESTINATION)
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(envoy_yaml: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [APIPROXY_ENVOY, "-c", str(envoy_yaml), *extra],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "env", "line"),
    [
        (
            (),
            {"APIPROXY_HANDOVER_SOCKET": ""},
            "APIPROXY_HANDOVER_SOCKET: expected a file path of at most 99 bytes",
        ),
        (
            ("--handover-socket", "/run/" + "x" * 100),
            {},
            "--handover-socket: expected a file path of at most 99 bytes",
        ),
        (
            ("--handover-socket", "/proc/apiproxy/handover"),
            {},
            "--handover-socket: expected a path where a Unix socket can be created (",
        ),
    ],
    ids=["empty-variable", "too-long", "uncreatable"],
)
def test_an_unusable_handover_socket_is_one_line(
    envoy_yaml: Path, extra: tuple[str, ...], env: dict[str, str], line: str
) -> None:
    done = run(envoy_yaml, *extra, env=env)
    assert done.returncode == 1, done.stderr
    errors = [text for text in done.stderr.splitlines() if "apiproxy-envoy:" in text]
    assert len(errors) == 1 and line in errors[0], done.stderr
    assert "Traceback" not in done.stderr
