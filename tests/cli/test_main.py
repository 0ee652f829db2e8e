"""The `apiproxy` command itself: no arguments shows the help (exit 0), `--version`, and `--help` pages
that say what each option takes instead of Python types."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import apiproxy


def apiproxy_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apiproxy", *args],
        check=False, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_no_arguments_prints_the_help_and_exits_0() -> None:
    result = apiproxy_command()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: apiproxy [OPTIONS] COMMAND")
    for command in ("run", "tunnel", "demo"):
        assert re.search(rf"^  {command} ", result.stdout, re.MULTILINE), result.stdout
    assert result.stderr == ""


def test_version() -> None:
    result = apiproxy_command("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"apiproxy version {apiproxy.__version__}\n"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("run", ["--upstream HOST:PORT", "--listen HOST:PORT", "--ip-address IP", "--destination VALUE",
                 "--destination-header NAME", "--idle-timeout DURATION", "--buffer-size SIZE",
                 "--max-connections N", "--interface NAME", "--dns-family [auto|v4|v6]",
                 "--log-format [text|json]", "--metrics-address IP:PORT|off"]),
        ("tunnel", ["--upstream HOST:PORT", "--shoot-namespace NAME", "--listen HOST:PORT", "--kubeconfig PATH",
                    "--write-kubeconfig PATH", "--drain-timeout DURATION", "--buffer-size SIZE"]),
    ],
)  # fmt: skip
def test_help_shows_what_each_option_takes(command: str, expected: list[str]) -> None:
    result = apiproxy_command(command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for shown in expected:
        assert shown in text, f"{shown!r} not in {command} --help"
    # typer's own placeholders: <str>, <list[str]>, TEXT, INTEGER
    assert not re.search(r"--[a-z-]+ (<\w|TEXT\b|INTEGER\b)", text), text
