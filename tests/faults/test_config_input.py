"""Hostile or broken config files, through the installed console scripts as an operator runs them:
`apiproxy-envoy --mode validate -c FILE` (Envoy's bootstrap) and `apiproxy tunnel --kubeconfig FILE`.

The attack, then the bound. Before, a 10 KB billion laughs where a port number is expected ran > 60 s and
reached 2 GiB (repr() of the value for the message); 100,000 levels of nesting ended in a RecursionError
traceback; a 30 MB file was still being parsed after 60 s at ~600 MiB, and so were 8 MB files of 4 million
YAML values (415 MiB) or 760,000 JSON objects (518 MiB); a YAML error in a kubeconfig quoted the
bearer-token line. Now each is refused at once by `apiproxy.documents`: one line, the documented exit code
(1 as Envoy's, 2 for the CLI), no traceback, nothing of the document quoted. Each process gets a generous
deadline and its peak RSS (wait4) a generous bound; timings are not asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lab.gateway import free_port

BIN = Path(sys.executable).parent
ENVOY_EXAMPLE = Path(__file__).parents[1] / "envoy" / "gardener-envoy.yaml"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.SIGNATURE-0123456789"
DEEP = 100_000
DEADLINE = 30.0  # seconds; each case takes well under a second
# Peak RSS of a refused file; the billion laughs reached 2 GiB before, a 30 MB file ~600 MiB.
RSS_BOUND = 256 * 1024 * 1024

KUBECONFIG = f"""apiVersion: v1
kind: Config
current-context: x
clusters:
- name: c
  cluster: {{server: "https://api.example.com"}}
contexts:
- name: x
  context: {{cluster: c, user: u}}
users:
- name: u
  user:
    token: {TOKEN}: oops
"""


def laughs(indent: str) -> str:
    """lol9 is 10^9 strings by aliases; each level is padded so the whole is about 10 KB."""
    lines = [f'{indent}lol0: &lol0 "{"lol" * 300}"']
    for n in range(1, 10):
        lines.append(f"{indent}lol{n}: &lol{n} [" + ", ".join([f"*lol{n - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def inputs(directory: Path) -> dict[str, Path]:
    example = ENVOY_EXAMPLE.read_text()
    kubeconfig_ok = KUBECONFIG.replace(": oops", "")
    big_yaml = "".join(f"    key_{index:08d}: {'x' * 45}\n" for index in range(30 * 1024 * 1024 // 60))
    texts = {
        "envoy-laughs.yaml": "node:\n  metadata:\n" + laughs("    ") + example.replace("port_value: 443", "port_value: *lol9", 1),
        "envoy-deep.yaml": "node: " + "[" * DEEP + "]" * DEEP + "\n" + example,
        "envoy-deep.json": '{"node": ' + "[" * DEEP + "]" * DEEP + "}",
        "envoy-30mb.yaml": "node:\n  metadata:\n" + big_yaml + example,
        # Under the size bound, but 4 million values: PyYAML builds ~50,000 a second.
        "envoy-dense.yaml": "node: {metadata: {x: [" + "1," * (4 * 1024 * 1024 - 3000) + "1]}}\n" + example,
        "envoy-dense.json": '{"node": {"metadata": {"x": [' + '{"k": "v"},' * (8 * 1024 * 1024 // 11 - 10) + "{}]}}}",
        "envoy-30mb.json": json.dumps({"node": {"metadata": {"x": "x" * (30 * 1024 * 1024)}}}),
        "envoy-ok.yaml": example,
        "envoy-ok.json": json.dumps(yaml.safe_load(example)),
        "kube-token.yaml": KUBECONFIG,
        "kube-laughs.yaml": "preferences:\n" + laughs("  ") + kubeconfig_ok.replace("kind: Config", "kind: Config\nextensions: *lol9"),
        "kube-deep.yaml": "preferences: " + "[" * DEEP + "]" * DEEP + "\n" + kubeconfig_ok,
        "kube-deep.json": '{"preferences": ' + "[" * DEEP + "]" * DEEP + "}",
        "kube-30mb.yaml": "preferences:\n" + big_yaml + kubeconfig_ok,
    }  # fmt: skip
    paths = {}
    for name, text in texts.items():
        paths[name] = directory / name
        paths[name].write_text(text)
    return paths


# case -> (input, exit code, what the one line must contain)
CASES: dict[str, tuple[str, int, str]] = {
    "envoy billion laughs where a port is expected": ("envoy-laughs.yaml", 1, "YAML aliases expand it to more than 100,000 values (line 8,"),
    "envoy 100,000 levels of YAML": ("envoy-deep.yaml", 1, "not valid YAML or JSON: while increasing flow level: exceeded maximum nesting depth (line 1,"),
    "envoy 100,000 levels of JSON": ("envoy-deep.json", 1, "nested deeper than 100 levels (line 1, column 109)"),
    "envoy 30 MB of YAML": ("envoy-30mb.yaml", 1, "cannot read the file: larger than 8 MiB"),
    "envoy 8 MB of 4 million values": ("envoy-dense.yaml", 1, "more than 100,000 values (line 1, column 200"),
    "envoy 8 MB of 760,000 JSON objects": ("envoy-dense.json", 1, "more than 100,000 values"),
    "envoy 30 MB of JSON": ("envoy-30mb.json", 1, "cannot read the file: larger than 8 MiB"),
    "kubeconfig syntax error on the token line": ("kube-token.yaml", 2, "not valid YAML or JSON: mapping values are not allowed in this context (line 13, column"),
    "kubeconfig billion laughs": ("kube-laughs.yaml", 2, "YAML aliases expand it to more than 100,000 values (line 7,"),
    "kubeconfig 100,000 levels of YAML": ("kube-deep.yaml", 2, "exceeded maximum nesting depth (line 1,"),
    "kubeconfig 100,000 levels of JSON": ("kube-deep.json", 2, "nested deeper than 100 levels (line 1, column 116)"),
    "kubeconfig 30 MB": ("kube-30mb.yaml", 2, "larger than 8 MiB"),
}  # fmt: skip


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes


def command(path: Path, workdir: Path) -> list[str]:
    if path.name.startswith("envoy"):
        return [str(BIN / "apiproxy-envoy"), "--mode", "validate", "-c", str(path)]
    return [str(BIN / "apiproxy"), "tunnel", "--upstream", "127.0.0.1:9", "--shoot-namespace", "shoot--foo--bar",
            "--listen", f"127.0.0.1:{free_port()}", "--kubeconfig", str(path),
            "--write-kubeconfig", str(workdir / f"{path.stem}.out.json")]  # fmt: skip


# Runs the command and writes its peak RSS (KiB) to argv[1]. A small parent of its own, because a child's
# ru_maxrss also counts the memory of the process it was forked from (vfork, exec), here pytest's.
MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(argv: list[str], workdir: Path) -> Outcome:
    """The process's status, output and peak RSS, killed (with its measuring parent) after DEADLINE."""
    rss = workdir / f"rss-{free_port()}"
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", MEASURE, str(rss), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=workdir, env={"PATH": f"{BIN}:/usr/bin:/bin"}, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group of this new session: the parent and the command
        process.communicate()
        pytest.fail(f"{argv[0]} still running after {DEADLINE} s")
    seconds = time.monotonic() - started
    return Outcome(process.returncode, stdout, stderr, seconds, int(rss.read_text()) * 1024)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every input once, two processes at a time."""
    workdir = tmp_path_factory.mktemp("config-input")
    paths = inputs(workdir)
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run, command(path, workdir), workdir) for name, path in paths.items()}
        yield {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_and_bounded(outcomes: dict[str, Outcome], case: str) -> None:
    name, code, expected = CASES[case]
    outcome = outcomes[name]
    lines = outcome.stderr.strip().splitlines()
    assert outcome.returncode == code, outcome.stderr[-2000:]
    assert "Traceback" not in outcome.stderr
    assert len(lines) == 1, outcome.stderr[-2000:]
    assert expected in lines[0], lines[0]
    if code == 1:
        assert lines[0].startswith("apiproxy-envoy: error initializing configuration '"), lines[0]
        assert f"{name}': " in lines[0], lines[0]
    else:
        assert lines[0].startswith("apiproxy: --kubeconfig: expected a usable kubeconfig ("), lines[0]
    assert outcome.seconds < DEADLINE
    assert outcome.peak_rss < RSS_BOUND, f"peak RSS {outcome.peak_rss >> 20} MiB"


def test_the_token_on_a_bad_line_is_not_on_stderr(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["kube-token.yaml"]
    assert outcome.returncode == 2
    for part in TOKEN.split("."):
        assert part not in outcome.stderr + outcome.stdout


@pytest.mark.parametrize("name", ["envoy-ok.yaml", "envoy-ok.json"])
def test_the_bounds_leave_gardeners_bootstrap_alone(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.strip().endswith(f"{name}' OK")
