"""`apiproxy demo`, the README's first command, works end to end without root or a cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.envoy
def test_demo_runs_the_whole_path_and_exits_0() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apiproxy", "demo"],
        check=False, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("-> 200 in") == 3
    assert "namespaces=default,kube-node-lease,kube-public,kube-system" in out
    assert "/ready -> 200" in out
    assert 'apiproxy_tunnels_closed_total{outcome="success",reason="completed"} 3.0' in out


def test_demo_without_the_lab_says_so_in_one_line() -> None:
    # An installed wheel has no lab/ (it is the source checkout's test world): hide it as such an install would.
    code = "import sys; sys.modules['lab'] = None; from apiproxy.cli import main; main(['demo'])"
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "make demo" in lines[0], result.stderr
