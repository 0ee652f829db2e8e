"""Bad input to `python -m benchmarks load`: one line naming the flag, the value and what was expected, exit
2, no traceback, no load started and no output written. Checked in-process (nothing here opens a socket)
and once through the real entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.load.cli import PROG, main

ROOT = Path(__file__).resolve().parents[2]
TARGET = ("--target", "127.0.0.1:9")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rate", "0", "--duration", "1s", *TARGET), "rate: expected a rate per second above 0"),
        (("rate", "-5", "--duration", "1s", *TARGET), "rate: expected a rate per second above 0"),
        (("rate", "fast", "--duration", "1s", *TARGET), "rate: expected a rate per second above 0"),
        (("rate", "10", *TARGET), "the following arguments are required: --duration"),
        (("rate", "10", "--duration", "1x", *TARGET), "--duration: expected a duration such as 5s"),
        (("rate", "1000000", "--duration", "24h", *TARGET), "is more than one run schedules"),
        (("storm", "0", *TARGET), "storm: expected an integer between 1 and 10000000, got '0'"),
        (("storm", "10", "--target", "api.example"), "--target: expected HOST:PORT (IPv6 as [ADDRESS]:PORT), got 'api.example'"),
        (("storm", "10", "--target", "fd00::1:443"), "--target: expected HOST:PORT"),
        (("storm", "10"), "expected one of --target HOST:PORT (a node proxy), --gateway HOST:PORT (the seed gateway) or --lab VARIANT"),
        (("storm", "10", *TARGET, "--gateway", "127.0.0.1:8443"), "expected one of --target HOST:PORT"),
        (("storm", "10", "--gateway", "127.0.0.1:8443"), "--gateway needs --destination VALUE"),
        (("storm", "10", "--gateway", "127.0.0.1:8443", "--destination", "a\rb"), "--destination: expected a non-empty HTTP header value"),
        (("storm", "10", "--gateway", "127.0.0.1:8443", "--destination", "x", "--destination-header", "Bad Name"),
         "--destination-header: expected an HTTP header name"),
        (("storm", "10", "--gateway", "127.0.0.1:8443", "--destination", "x", "--destination-header", "Content-Length"),
         "--destination-header: expected a header name other than"),
        (("storm", "10", "--gateway", "127.0.0.1:8443", "--destination", "x", "--connect-authority", "api"),
         "--connect-authority: expected HOST:PORT"),
        (("storm", "10", *TARGET, "--destination", "x"), "--destination: only with --gateway"),
        (("storm", "10", *TARGET, "--plain", "--insecure"), "--insecure: not with --plain"),
        (("storm", "10", *TARGET, "--ca", "/nonexistent/ca.pem"), "--ca: expected a readable PEM file"),
        (("storm", "10", *TARGET, "--sni", "not a name"), "--sni: expected a DNS name"),
        (("storm", "10", *TARGET, "--path", "version"), "--path: expected a request path starting with /"),
        (("storm", "10", *TARGET, "--shard", "2/2"), "--shard: expected I/N"),
        (("storm", "10", *TARGET, "--workers", "0"), "--workers: expected an integer between 1 and 256"),
        (("storm", "10", *TARGET, "--timeout", "0s"), "--timeout: expected a duration greater than zero"),
        (("hold", "10", "--duration", "5s", "--probe-interval", "soon", *TARGET), "--probe-interval: expected a duration"),
        (("bulk", "--duration", "1s", "--block-size", "1GiB", *TARGET), "--block-size: expected a size between 1 and"),
        (("requests", "--connections", "1", "--rate", "5", "--duration", "1s", *TARGET, "--shard", "0/2"),
         "--connections 1: each of the 2 shards needs at least one"),
        (("storm", "10", "--lab", "nginx"), "--lab: expected one of apiproxy, envoy-c1, envoy-c2, gateway, got 'nginx'"),
        (("storm", "10", "--lab", "apiproxy", "--ca", "ca.pem"), "--ca: not with --lab"),
        (("storm", "10", "--lab", "apiproxy", "--shard", "0/2"), "--shard: not with --lab"),
        (("storm", "10", "--lab", "apiproxy", *TARGET), "expected one of --target HOST:PORT"),
        (("flood", "10"), "argument SCENARIO: invalid choice: 'flood'"),
        (("storm", "10", *TARGET, "--bogus"), "unrecognized arguments: --bogus"),
        (("merge", "/nonexistent/shard-0"), "/nonexistent/shard-0: cannot read it (No such file or directory)"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(
    args: tuple[str, ...], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    assert main([*args, "--output", str(output)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"{PROG}: ")
    assert message in captured.err
    assert not output.exists()


def test_a_scenario_that_cannot_fit_this_machine_is_refused_through_the_real_command(tmp_path: Path) -> None:
    # A million tunnels open at once from one worker: more descriptors and local ports than any machine has.
    done = subprocess.run([sys.executable, "-m", "benchmarks", "load", "storm", "1000000", *TARGET,
                           "--workers", "1", "--output", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"{PROG}: storm 1,000,000: 1,000,000 tunnels open at once per worker")
    assert "RLIMIT_NOFILE" in done.stderr
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
