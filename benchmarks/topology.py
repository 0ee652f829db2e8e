"""The loopback topology: backends (a plain-HTTP answerer, the same in TLS as the shoot's API server, and an
iperf3 server) behind a real Envoy seed gateway configured like Gardener's (circuit breakers raised for 10k
tunnels), and the node proxy under test in front of it: apiproxy, the real Envoy on Gardener's envoy.yaml,
or none (the client dials the backend). Every process is a child started here and ended by its PID."""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.gateway import EnvoyProcess, GatewayConfig, envoy_binary, free_port, start_gateway
from lab.processes import stop
from lab.proxy import ApiproxyProcess

# Gardener's envoy.yaml as the tests keep it; rendered here for loopback as tests/envoy/render.py does.
GARDENER_ENVOY_YAML = Path(__file__).resolve().parents[1] / "tests" / "envoy" / "gardener-envoy.yaml"
DEST_HTTP = "outbound|443||kube-apiserver.shoot--bench--http.svc.cluster.local"
DEST_IPERF = "outbound|443||kube-apiserver.shoot--bench--iperf.svc.cluster.local"
DEST_TLS = "outbound|443||kube-apiserver.shoot--bench--tls.svc.cluster.local"
# Both node proxies get the same tunnel limit, a little above the 10,000 idle tunnels of the memory load.
MAX_TUNNELS = 11000
GATEWAY_BUFFER_LIMIT = 32 * 1024
VARIANTS = ("apiproxy", "envoy-c1", "envoy-c2", "none")
# Measured only when asked for (--variants): apiproxy with `--metrics-address off --no-access-log`, the B
# side of the monitoring A/B.
OPTIONAL_VARIANTS = ("apiproxy-nomon",)


@dataclass
class Backends:
    """The HTTP answerers (plain and TLS) and the iperf3 server, and the seed gateway routing to them."""

    http_port: int
    iperf_port: int
    gateway: EnvoyProcess
    gateway_port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tls_port: int = 0
    # The CA the TLS backend's certificate (for kubernetes.default.svc) is verified with.
    ca_file: Path | None = None
    _certificates: tempfile.TemporaryDirectory[str] | None = None

    def port_for(self, destination: str) -> int:
        return {DEST_HTTP: self.http_port, DEST_TLS: self.tls_port}.get(destination, self.iperf_port)

    def stop(self) -> None:
        self.gateway.stop()
        for process in self.processes:
            stop(process)
        if self._certificates is not None:
            self._certificates.cleanup()


def _answerer(port: int, *tls: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.backend", str(port), *tls],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        stop(process)
        raise RuntimeError(f"the {'TLS' if tls else 'HTTP'} backend did not start")
    return process


def start_backends(gateway_concurrency: int = 2) -> Backends:
    from lab.certs import make_certificates  # trustme, the demo extra the harness's Envoy comes with

    processes: list[subprocess.Popen[bytes]] = []
    certificates = tempfile.TemporaryDirectory(prefix="apiproxy-bench-tls-")
    try:
        http_port, iperf_port, tls_port = free_port(), free_port(), free_port()
        processes.append(_answerer(http_port))
        tls = make_certificates(Path(certificates.name))
        processes.append(_answerer(tls_port, str(tls.cert_file), str(tls.key_file)))
        iperf = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # fmt: skip
        processes.append(iperf)
        config = GatewayConfig(
            clusters={DEST_HTTP: ("127.0.0.1", http_port), DEST_IPERF: ("127.0.0.1", iperf_port),
                      DEST_TLS: ("127.0.0.1", tls_port)},
            max_connections=4 * MAX_TUNNELS,
            concurrency=gateway_concurrency,
            # An edge Envoy (the seed's Istio ingress gateway) keeps 32 KiB per connection, Envoy's edge best
            # practice, not its 1 MiB default: what a node proxy's writes cost the gateway depends on it.
            buffer_limit=GATEWAY_BUFFER_LIMIT,
        )  # fmt: skip
        gateway = start_gateway(config)
        _wait_listening(iperf_port)
        return Backends(
            http_port, iperf_port, gateway, config.port, processes, tls_port, tls.ca_file, certificates
        )
    except BaseException:
        for process in processes:
            stop(process)
        certificates.cleanup()
        raise


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:g}s")


@dataclass
class NodeProxy:
    """One node proxy serving `port`; pid is None for the no-proxy variant (port is then the backend's)."""

    variant: str
    port: int
    pid: int | None
    _stop: Any = None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def render_envoy(listen_port: int, metrics_port: int, gateway_port: int, admin_socket: Path,
                 destination: str) -> dict[str, Any]:  # fmt: skip
    """Gardener's envoy.yaml with every address on loopback and the tunnel limits at MAX_TUNNELS."""
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(GARDENER_ENVOY_YAML.read_text()))
    static = config["layered_runtime"]["layers"][0]["static_layer"]
    for key in static:
        static[key] = MAX_TUNNELS
    config["admin"]["address"]["pipe"]["path"] = str(admin_socket)
    listeners = {listener["name"]: listener for listener in config["static_resources"]["listeners"]}
    listeners["kube_apiserver"]["address"]["socket_address"].update(
        address="127.0.0.1", port_value=listen_port
    )
    metrics = listeners["metrics"]
    metrics["address"]["socket_address"].update(address="127.0.0.1", port_value=metrics_port)
    metrics.pop("additional_addresses", None)
    tcp_proxy = listeners["kube_apiserver"]["filter_chains"][0]["filters"][0]["typed_config"]
    tcp_proxy["tunneling_config"]["headers_to_add"][0]["header"]["value"] = destination
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    # Gardener's cluster has no circuit breakers, so Envoy's default of 1,024 connections would cap the
    # idle-tunnel load; raised like the listener limits.
    limits = {
        "max_connections": MAX_TUNNELS,
        "max_pending_requests": MAX_TUNNELS,
        "max_requests": MAX_TUNNELS,
    }
    clusters["kube_apiserver"]["circuit_breakers"] = {"thresholds": [limits]}
    endpoint = clusters["kube_apiserver"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"].update(address="127.0.0.1", port_value=gateway_port)
    admin_endpoint = clusters["uds_admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    admin_endpoint["address"]["pipe"]["path"] = str(admin_socket)
    return config


def _start_envoy(concurrency: int, destination: str, backends: Backends) -> NodeProxy:
    workdir = tempfile.TemporaryDirectory(prefix="apiproxy-bench-envoy-")
    listen_port, metrics_port = free_port(), free_port()
    config = render_envoy(listen_port, metrics_port, backends.gateway_port, Path(workdir.name) / "admin.socket",
                          destination)  # fmt: skip
    config_path = Path(workdir.name) / "envoy.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # Gardener's command line; the access log (stdout) goes to a file, as a container runtime would take it.
    with (Path(workdir.name) / "stdout").open("wb") as out:
        process = subprocess.Popen(
            [envoy_binary(), "--concurrency", str(concurrency), "--use-dynamic-base-id", "-c", str(config_path),
             "-l", "warning"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def stop_envoy() -> None:
        stop(process)
        workdir.cleanup()

    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            log = (Path(workdir.name) / "stdout").read_text(errors="replace")[-2000:]
            stop_envoy()
            raise RuntimeError(f"node Envoy exited with {process.returncode}: {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/ready", timeout=1) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_envoy()
            raise RuntimeError("node Envoy not ready within 30 s")
        time.sleep(0.05)
    return NodeProxy(f"envoy-c{concurrency}", listen_port, process.pid, stop_envoy)


def _start_apiproxy(destination: str, backends: Backends, monitoring: bool = True) -> NodeProxy:
    # As deployed, and as the node Envoy runs here: metrics served (Envoy names too) and the access log
    # on, to a file as a container runtime would take stdout. Without monitoring: neither.
    port, metrics_port = free_port(), free_port()
    switches = ["--metrics-address", f"127.0.0.1:{metrics_port}"] if monitoring else [
        "--metrics-address", "off", "--no-access-log"]  # fmt: skip
    proxy = ApiproxyProcess([
        "run", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{backends.gateway_port}",
        "--destination", destination, *switches, "--max-connections", str(MAX_TUNNELS),
        # The harness's clients all come from 127.0.0.1: one source, so its cap is raised with the limit.
        "--max-connections-per-source", str(MAX_TUNNELS),
    ]).start()  # fmt: skip
    return NodeProxy("apiproxy" if monitoring else "apiproxy-nomon", port, proxy.pid, proxy.cleanup)


def start_node(variant: str, destination: str, backends: Backends) -> NodeProxy:
    if variant in ("apiproxy", "apiproxy-nomon"):
        return _start_apiproxy(destination, backends, monitoring=variant == "apiproxy")
    if variant.startswith("envoy-c"):
        return _start_envoy(int(variant.removeprefix("envoy-c")), destination, backends)
    if variant == "none":
        return NodeProxy("none", backends.port_for(destination), None)
    raise ValueError(f"unknown variant {variant!r}")
