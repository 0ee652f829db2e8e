"""The drop-in sidecar's command line: pflag syntax, klog's flags with their Go types, and the exit codes
that need no network namespace (the others are in test_netns_sidecar.py). The expected lines are the Go
binary's (gardener/apiserver-proxy at its head, klog v2.140.0, pflag v1.0.10), run with the same
arguments."""

from __future__ import annotations

import subprocess
import sys

import pytest

from apiproxy.vip.goflags import USAGE_FLAGS, FlagError, HelpRequested, parse_flags
from apiproxy.vip.sidecar import build_config, parse_address

SIDECAR = [sys.executable, "-c", "from apiproxy.vip.sidecar import main; main()"]


def test_go_flag_forms() -> None:
    flags = parse_flags(["--ip-address=10.96.0.2", "--interface", "apiserver-proxy", "--daemon=false", "--cleanup",
                         "--sync-interval", "30s", "-v=2", "--logtostderr", "--vmodule=x=4", "positional"])  # fmt: skip
    assert flags.values["ip-address"] == "10.96.0.2"
    assert flags.values["interface"] == "apiserver-proxy"
    assert flags.values["sync-interval"] == "30s"
    assert flags.values["v"] == "2"
    assert flags.switches["daemon"] is False
    assert flags.switches["cleanup"] is True
    assert flags.switches["setup-iptables"] is False


@pytest.mark.parametrize("argv", [["-v3"], ["-v=3"], ["-v", "3"], ["--v=3"], ["--v", "3"]])
def test_verbosity_forms(argv: list[str]) -> None:
    assert parse_flags(argv).values["v"] == "3"


def test_defaults() -> None:
    flags = parse_flags([])
    assert (flags.values["interface"], flags.values["sync-interval"], flags.values["port"]) == (
        "lo",
        "1m",
        "443",
    )
    assert flags.switches["daemon"] is True
    assert flags.switches["legacy_stderr_threshold_behavior"] is True


def test_klog_v2_140_flags_are_accepted() -> None:
    flags = parse_flags(["--alsologtostderrthreshold=ERROR", "--legacy_stderr_threshold_behavior=false",
                         "--one_output", "--stderrthreshold", "warning", "--log_file_max_size=0x10",
                         "--log_backtrace_at=app.go:35", "--vmodule=a=1,,b=0"])  # fmt: skip
    assert flags.values["alsologtostderrthreshold"] == "ERROR"
    assert flags.switches["legacy_stderr_threshold_behavior"] is False
    assert flags.switches["one_output"] is True


def test_every_flag_of_the_usage_is_parsed() -> None:
    samples = {"string": "x", "severity": "ERROR", "traceLocation": "a.go:1", "uint": "1", "duration": "1s",
               "Level": "1", "moduleSpec": "a=1"}  # fmt: skip
    for line in USAGE_FLAGS.splitlines():
        words = line.replace("-v, ", "").split()
        name, kind = words[0], words[1]
        parse_flags([name, samples[kind]] if kind in samples else [name])  # no FlagError


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--daemon=maybe"], 'invalid argument "maybe" for "--daemon" flag: strconv.ParseBool: parsing "maybe": invalid syntax'),
        (["--logtostderr=nope"], 'invalid argument "nope" for "--logtostderr" flag: parse error'),
        (["--legacy_stderr_threshold_behavior=maybe"], 'invalid argument "maybe" for "--legacy_stderr_threshold_behavior" flag: parse error'),
        (["--alsologtostderrthreshold=banana"], 'invalid argument "banana" for "--alsologtostderrthreshold" flag: strconv.ParseInt: parsing "banana": invalid syntax'),
        (["-v=99999999999"], 'invalid argument "99999999999" for "-v, --v" flag: strconv.ParseInt: parsing "99999999999": value out of range'),
        (["--vmodule=a=-1"], 'invalid argument "a=-1" for "--vmodule" flag: negative value for vmodule level'),
        (["--vmodule=x"], 'invalid argument "x" for "--vmodule" flag: syntax error: expect comma-separated list of filename=N'),
        (["--log_backtrace_at=x"], 'invalid argument "x" for "--log_backtrace_at" flag: syntax error: expect file.go:234'),
        (["--log_backtrace_at=a.go:0"], 'invalid argument "a.go:0" for "--log_backtrace_at" flag: negative or zero value for level'),
        (["--log_file_max_size=-1"], 'invalid argument "-1" for "--log_file_max_size" flag: parse error'),
        (["--sync-interval=soon"], 'invalid argument "soon" for "--sync-interval" flag: time: invalid duration "soon"'),
        (["--sync-interval=30"], 'invalid argument "30" for "--sync-interval" flag: time: missing unit in duration "30"'),
        (["--unknown"], "unknown flag: --unknown"),
        (["-interface=lo"], "unknown shorthand flag: 'i' in -interface=lo"),
        (["--ip-address"], "flag needs an argument: --ip-address"),
    ],
)  # fmt: skip
def test_flag_errors(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError) as raised:
        parse_flags(argv)
    assert str(raised.value) == message


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["--help=false"]])
def test_help(argv: list[str]) -> None:
    with pytest.raises(HelpRequested):
        parse_flags(argv)


def test_port_is_a_string_unless_iptables_use_it() -> None:
    address = parse_address("10.96.0.2")
    assert build_config(parse_flags(["--port=abc"]), address).port == 443  # kept, unused: as Go
    assert build_config(parse_flags(["--port=8443", "--setup-iptables"]), address).port == 8443


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fe80::1%lo", 'unable to parse IP address "fe80::1%lo" - invalid CIDR address: fe80::1%lo/128'),
        ("10.96.0.300", 'unable to parse IP address "10.96.0.300"'),
    ],
)
def test_addresses_go_cannot_parse(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="unable to parse IP address") as raised:
        parse_address(text)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("argv", "code", "stderr"),
    [
        ([], 1, "] --ip-address is required"),
        (["--ip-address="], 1, "--ip-address is required"),
        (["--ip-address=10.96.0.300"], 255, 'unable to parse IP address "10.96.0.300"'),
        (["--ip-address=fe80::1%lo"], 255, 'unable to parse IP address "fe80::1%lo" - invalid CIDR address'),
        (["--ip-address", "10.96.0.2", "--daemon=nope"], 2, 'invalid argument "nope"'),
        (["--sync-interval=soon"], 2, 'invalid argument "soon" for "--sync-interval" flag'),
        (["--ip-address=10.96.0.2", "--sync-interval=0s"], 2, "--sync-interval: expected a duration"),
        (["--ip-address=10.96.0.2", "--interface=a/b"], 2, "--interface: expected a Linux interface name"),
        (["--ip-address=10.96.0.2", "--setup-iptables", "--port=abc"], 2,
         "--port: expected a port number 1-65535 with --setup-iptables (its rules match on it), got 'abc'"),
        (["--help"], 0, "--alsologtostderrthreshold severity   logs at or above"),
    ],
)  # fmt: skip
def test_exit_codes(argv: list[str], code: int, stderr: str) -> None:
    done = subprocess.run([*SIDECAR, *argv], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == code, done.stderr
    assert stderr in done.stderr
    assert "Traceback" not in done.stderr
