"""The drop-in sidecar's command line: Go flag syntax and the exit codes that need no network namespace
(the others are in test_netns_sidecar.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from apiproxy.vip.sidecar import FlagError, HelpRequested, parse_flags

SIDECAR = [sys.executable, "-c", "from apiproxy.vip.sidecar import main; main()"]


def test_go_flag_forms() -> None:
    flags = parse_flags(["--ip-address=10.96.0.2", "-interface", "apiserver-proxy", "--daemon=false", "-cleanup",
                         "--sync-interval", "30s", "-v=2", "--logtostderr", "--vmodule=x=4", "positional"])  # fmt: skip
    assert flags.values["ip-address"] == "10.96.0.2"
    assert flags.values["interface"] == "apiserver-proxy"
    assert flags.values["sync-interval"] == "30s"
    assert flags.values["v"] == "2"
    assert flags.switches["daemon"] is False
    assert flags.switches["cleanup"] is True
    assert flags.switches["setup-iptables"] is False


def test_defaults_and_shorthand_verbosity() -> None:
    flags = parse_flags(["-v3"])
    assert flags.values["v"] == "3"
    assert (flags.values["interface"], flags.values["sync-interval"], flags.values["port"]) == (
        "lo",
        "1m",
        "443",
    )
    assert flags.switches["daemon"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--daemon=maybe"], 'invalid argument "maybe" for "--daemon" flag'),
        (["--unknown"], "unknown flag: --unknown"),
        (["--ip-address"], "flag needs an argument: --ip-address"),
    ],
)
def test_flag_errors(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=message):
        parse_flags(argv)


def test_help() -> None:
    with pytest.raises(HelpRequested):
        parse_flags(["-h"])


@pytest.mark.parametrize(
    ("argv", "code", "stderr"),
    [
        ([], 1, "] --ip-address is required"),
        (["--ip-address="], 1, "--ip-address is required"),
        (["--ip-address=10.96.0.300"], 255, 'unable to parse IP address "10.96.0.300"'),
        (["--ip-address", "10.96.0.2", "--daemon=nope"], 2, 'invalid argument "nope"'),
        (["--ip-address=10.96.0.2", "--sync-interval=soon"], 2, "--sync-interval: expected a duration"),
        (["--ip-address=10.96.0.2", "--interface=a/b"], 2, "--interface: expected a Linux interface name"),
        (["--help"], 0, "--sync-interval duration"),
    ],
)
def test_exit_codes(argv: list[str], code: int, stderr: str) -> None:
    done = subprocess.run([*SIDECAR, *argv], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == code, done.stderr
    assert stderr in done.stderr
    assert "Traceback" not in done.stderr
