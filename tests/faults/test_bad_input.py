"""Case 9: bad configuration and bad input. Header injection (CR/LF, control bytes, non-token names),
out-of-range ports and listen addresses that cannot be resolved or bound each end `apiproxy run` with one
line naming the flag and the value, exit 2, no traceback, and nothing left started (no listener, no
monitoring port)."""

from __future__ import annotations

import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab.gateway import free_port

# (flag named in the error, arguments replacing the defaults, environment)
CASES: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "destination_crlf": ("--destination", ["--destination", "d\r\nX-Evil: 1"], {}),
    "destination_control": ("--destination", ["--destination", "d\x7f\x01"], {}),
    "destination_env_crlf": ("--destination", [], {"APIPROXY_DESTINATION": "d\r\nHost: evil"}),
    "authority_crlf": ("--connect-authority", ["--connect-authority", "gw:443\r\nX: y"], {}),
    "authority_space": ("--connect-authority", ["--connect-authority", "gw:443 HTTP/1.1"], {}),
    "header_space": ("--destination-header", ["--destination-header", "X Bad"], {}),
    "header_crlf": ("--destination-header", ["--destination-header", "X\r\nY"], {}),
    "upstream_port_0": ("--upstream", ["--upstream", "gw.example:0"], {}),
    "upstream_port_high": ("--upstream", ["--upstream", "gw.example:65536"], {}),
    "upstream_port_negative": ("--upstream", ["--upstream", "gw.example:-1"], {}),
    "listen_port_high": ("--listen", ["--listen", "127.0.0.1:70000"], {}),
    "metrics_port_high": ("--metrics-address", ["--metrics-address", "127.0.0.1:99999"], {}),
    "listen_unresolvable": ("--listen", ["--listen", "nonexistent.invalid:8443"], {}),
    # TEST-NET-1: no interface here has it, and without --ip-address the listener does not use FREEBIND.
    "listen_not_local": ("--listen", ["--listen", "192.0.2.1:8443"], {}),
}


def run(arguments: list[str], env: dict[str, str], metrics_port: int) -> subprocess.CompletedProcess[str]:
    base = {"--upstream": "127.0.0.1:9", "--destination": "outbound|443||kube-apiserver.x.svc.cluster.local",
            "--listen": f"127.0.0.1:{free_port()}", "--metrics-address": f"127.0.0.1:{metrics_port}"}  # fmt: skip
    for flag in arguments[::2]:
        base.pop(flag, None)
    if "APIPROXY_DESTINATION" in env:
        base.pop("--destination")
    args = [a for pair in base.items() for a in pair] + arguments
    return subprocess.run([sys.executable, "-m", "apiproxy", "run", *args], capture_output=True, text=True,
                          timeout=30, env={"PATH": "/usr/bin:/bin", **env}, check=False)  # fmt: skip


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[subprocess.CompletedProcess[str], int]]:
    """All cases at once: each is a Python start-up, run four at a time."""
    ports = {name: free_port() for name in CASES}
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(run, CASES[name][1], CASES[name][2], ports[name]) for name in CASES}
        return {name: (future.result(), ports[name]) for name, future in futures.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused(
    outcomes: dict[str, tuple[subprocess.CompletedProcess[str], int]], case: str
) -> None:
    done, metrics_port = outcomes[case]
    flag = CASES[case][0]
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    variables = list(CASES[case][2])
    # A value from the environment is named by its variable and its flag.
    named = f"{variables[0]} ({flag})" if variables else flag
    assert len(lines) == 1 and lines[0].startswith(f"apiproxy: {named}: expected "), done.stderr
    assert "listening on" not in done.stderr + done.stdout
    assert not listening(metrics_port)
