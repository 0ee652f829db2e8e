"""`apiproxy-envoy`'s command line: Envoy's flags and exit codes, Gardener's exact command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from apiproxy.envoy.cli import run
from lab.gateway import free_port

from .node import APIPROXY_ENVOY, gardener_command, get, node_proxy
from .render import EXAMPLE, example, render_loopback


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.startswith("apiproxy-envoy version: apiproxy ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "PARSE ERROR: unrecognized arguments: --bogus"),
        (["-c", "x", "--concurrency", "two"], "PARSE ERROR: argument --concurrency: expected an unsigned integer, got 'two'"),
        (["-c", "x", "--drain-time-s", "-1"], "PARSE ERROR: argument --drain-time-s: expected an unsigned integer"),
        ([], "-c/--config-path: expected the path of an Envoy v3 bootstrap"),
        (["-c", "x", "--mode", "fast"], "--mode: expected one of serve, validate, init_only, got 'fast'"),
        (["-c", "x", "-l", "loud"], "-l/--log-level: expected one of trace, debug, info"),
        (["-c", "x", "--config-yaml", "admin: {}"], "--config-yaml: not supported"),
        (["-c", "/nonexistent/envoy.yaml"], "error initializing configuration '/nonexistent/envoy.yaml': cannot read the file: No such file or directory"),
    ],
)  # fmt: skip
def test_bad_command_lines_exit_1_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"apiproxy-envoy: {message}"), err
    assert err.count("\n") == 1


def test_envoys_other_flags_are_tolerated(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        f"--config-path={EXAMPLE}", "--mode", "validate", "--concurrency", "2", "--use-dynamic-base-id",
        "--base-id", "7", "--base-id-path", "/tmp/x", "--disable-hot-restart", "--drain-time-s", "30",
        "--drain-strategy", "immediate", "--parent-shutdown-time-s", "60", "-l", "debug", "--log-format", "%v",
        "--component-log-level", "upstream:debug", "--service-cluster", "c", "--service-node", "n",
        "--stats-tag", "a:b", "--stats-tag", "c:d", "--file-flush-interval-msec", "50",
        "--local-address-ip-version", "v4", "--enable-core-dump", "--skip-deprecated-logs",
    ]  # fmt: skip
    assert run(argv) == 0
    assert capsys.readouterr().out == f"configuration '{EXAMPLE}' OK\n"


def test_allow_unknown_static_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = example()
    document["static_resources"]["clusters"][0]["not_a_field"] = 1
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(document))
    assert run(["--mode", "validate", "-c", str(path)]) == 1
    assert "static_resources.clusters[0].not_a_field: unknown field" in capsys.readouterr().err
    assert run(["--mode", "validate", "--allow-unknown-static-fields", "-c", str(path)]) == 0


def test_gardeners_command_line_serves_and_sigterm_exits_0(tmp_path: Path) -> None:
    listen_port, metrics_port = free_port(), free_port()
    admin = Path(f"/tmp/apiproxy-admin-{os.getpid()}-cli.socket")
    config = render_loopback(listen_port, metrics_port, free_port(), admin)
    with node_proxy("apiproxy", config, tmp_path, metrics_port) as node:
        assert node.process.args[1:5] == ["--concurrency", "2", "--use-dynamic-base-id", "-c"]  # type: ignore[index]
        assert get(f"http://[::1]:{metrics_port}/ready")[0] == 200
        os.kill(node.process.pid, signal.SIGTERM)
        assert node.process.wait(30) == 0
    log = node.stderr()
    assert "Envoy flags without meaning for apiproxy, ignored: --use-dynamic-base-id" in log
    assert "--concurrency 2: apiproxy serves every connection from one event loop" in log
    assert (
        "-> localhost:" in log
        and "(connect api.bar.foo.internal.example.com.:443, headers X-Gardener-Destination)" in log
    )
    assert f"listening on 127.0.0.1:{listen_port}" in log


def test_a_listener_address_not_on_this_host_exits_1(tmp_path: Path) -> None:
    """The VIP is not there (Gardener's sidecar adds it): like Envoy, exit 1 with one line; no freebind."""
    metrics_port = free_port()
    config = render_loopback(free_port(), metrics_port, free_port(), tmp_path / "admin.socket")
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] = "240.168.102.23"
    path = tmp_path / "envoy.yaml"
    path.write_text(json.dumps(config))
    done = subprocess.run(
        gardener_command("apiproxy", path), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "apiproxy-envoy: static_resources.listeners[0].address: expected an address this host can listen on"
    ), last
    assert "240.168.102.23" in last
    assert "Traceback" not in done.stderr
    assert APIPROXY_ENVOY.endswith("apiproxy-envoy")
