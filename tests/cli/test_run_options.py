"""`apiproxy run` option errors: one line naming the option, the value and what is expected; exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BASE = [
    "--listen",
    "127.0.0.1:1",
    "--upstream",
    "gw.example.:8443",
    "--destination",
    "outbound|443||x.svc.cluster.local",
]


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith("APIPROXY_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "apiproxy", "run", *args],
        check=False, capture_output=True, text=True, timeout=30, env=environment, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--listen", "127.0.0.1:0", "--destination", "x"], "--upstream: expected HOST:PORT of the seed gateway (required), got ''"),
        ([*BASE, "--upstream", "api.example"], "--upstream: expected HOST:PORT (IPv6 as [ADDRESS]:PORT), got 'api.example'"),
        ([*BASE, "--upstream", "gw:70000"], "--upstream: expected HOST:PORT (IPv6 as [ADDRESS]:PORT) with a port between 1 and 65535, got 'gw:70000'"),
        ([*BASE, "--destination", "a\r\nX-Evil: 1"], "--destination: expected a non-empty HTTP header value"),
        ([*BASE, "--destination-header", "X Bad"], "--destination-header: expected an HTTP header name"),
        ([*BASE, "--connect-authority", "x:1\r\nHost: evil"], "--connect-authority: expected HOST:PORT"),
        ([*BASE, "--idle-timeout", "5q"], "--idle-timeout: expected a duration such as 5s"),
        ([*BASE, "--connect-timeout", "0"], "--connect-timeout: expected a duration greater than zero, got '0'"),
        ([*BASE, "--buffer-size", "32XB"], "--buffer-size: expected a size between 1024 and"),
        ([*BASE, "--max-connections", "many"], "--max-connections: expected an integer between 1 and 1000000, got 'many'"),
        ([*BASE, "--upstream-protocol", "socks"], "--upstream-protocol: expected one of connect, proxy-protocol-v2, got 'socks'"),
        ([*BASE, "--dns-family", "v5"], "--dns-family: expected one of auto, v4, v6, got 'v5'"),
        ([*BASE, "--tcp-keepalive-time", "0.5s"], "--tcp-keepalive-time: expected a duration between 1s and 32767s"),
        (["--upstream", "gw:1", "--destination", "x"], "--listen: expected HOST:PORT to accept on, or --ip-address"),
        ([*BASE, "--ip-address", "10.96.0"], "--ip-address: expected an IPv4 or IPv6 address, got '10.96.0'"),
        ([*BASE, "--listen", "no-such-host.invalid:443"], "--listen: expected an address this host can resolve"),
        ([*BASE, "--log-format", "xml"], "--log-format: expected text or json, got 'xml'"),
        # h11 raised a traceback for these two; every framing or hop-by-hop name is refused alike.
        ([*BASE, "--destination-header", "Host"], "--destination-header: expected a header name other than Host, Content-Length"),
        ([*BASE, "--destination-header", "content-length"], "got 'content-length'"),
        ([*BASE, "--destination-header", "Transfer-Encoding"], "got 'Transfer-Encoding'"),
        ([*BASE, "--destination-header", "Proxy-Authorization"], "got 'Proxy-Authorization'"),
    ],
)  # fmt: skip
def test_bad_values_exit_2_with_one_line(args: list[str], expected: str) -> None:
    result = run(args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_option_is_one_line_too() -> None:
    result = run([*BASE, "--bogus"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--bogus" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("APIPROXY_IDLE_TIMEOUT", "banana", "APIPROXY_IDLE_TIMEOUT (--idle-timeout): expected a duration such as 5s"),
        ("APIPROXY_BUFFER_SIZE", "lots", "APIPROXY_BUFFER_SIZE (--buffer-size): expected a size between 1024 and"),
        ("APIPROXY_DESTINATION_HEADER", "Host", "APIPROXY_DESTINATION_HEADER (--destination-header): expected a header name other than Host"),
    ],
)  # fmt: skip
def test_a_refused_environment_value_names_the_variable_and_the_flag(
    variable: str, value: str, expected: str
) -> None:
    result = run(BASE, env={variable: value})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert expected in result.stderr and repr(value) in result.stderr
    assert "Traceback" not in result.stderr


def test_the_same_value_on_the_command_line_names_only_the_flag() -> None:
    result = run([*BASE, "--idle-timeout", "banana"], env={"APIPROXY_IDLE_TIMEOUT": "1h"})
    assert result.returncode == 2
    assert result.stderr.startswith("apiproxy: --idle-timeout: expected a duration"), result.stderr


def test_listen_address_in_use_is_a_config_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run([*BASE, "--listen", f"127.0.0.1:{port}", "--metrics-address", "off"])
    assert result.returncode == 2
    assert (
        f"--listen: expected an address this host can listen on (Address already in use), got '127.0.0.1:{port}'"
        in result.stderr
    )


def test_run_serves_from_a_lean_process_without_the_cli_libraries() -> None:
    """`apiproxy run` parses with typer (and pydantic), then replaces itself with `python -m apiproxy.serve`
    (same PID), which never loads them: ~14 MiB of RSS a node proxy no longer carries."""
    from lab.gateway import free_port
    from lab.proxy import ApiproxyProcess

    port, metrics_port = free_port(), free_port()
    with ApiproxyProcess(
        ["run", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1", "--destination", "d",
         "--metrics-address", f"127.0.0.1:{metrics_port}"],
        command=[str(Path(sys.executable).with_name("apiproxy"))],
    ) as proxy:  # fmt: skip
        cmdline = Path(f"/proc/{proxy.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:3] == [b"-m", b"apiproxy.serve"] and b"--listen" in cmdline
        maps = Path(f"/proc/{proxy.pid}/maps").read_text()
        assert "pydantic_core" not in maps  # the extension module pydantic (typer's) would have mapped
