"""Differential, on loopback: Gardener's envoy.yaml (rendered with loopback addresses, free ports and a
temporary admin pipe) run once by the real Envoy and once by `apiproxy-envoy`, each started with Gardener's
exact command line in front of the same real Envoy seed gateway and TLS backend. The same client workload
must give the same observable results."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apiproxy.monitoring.envoy_stats import NAMES
from lab.certs import LabCertificates, make_certificates
from lab.gateway import DESTINATION, GatewayConfig, free_port, start_gateway
from lab.loop_thread import EchoThread

from .node import KINDS, get, node_proxy
from .render import render_loopback

pytestmark = pytest.mark.envoy

PAYLOAD_SIZES = (1, 4096, 100_000, 1_000_000)
# Gardener's format: [START_TIME] RESPONSE_CODE RESPONSE_FLAGS rx tx DURATIONms "DOWNSTREAM" "UPSTREAM"
ACCESS_LINE = re.compile(r'^\[(\S+)\] (\d+) (\S+) (\d+) rx (\d+) tx (\d+)ms "([^"]*)" "([^"]*)"$')


@dataclass
class Lab:
    certs: LabCertificates
    gateway_port: int
    workdir: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("envoy-differential")
    certs = make_certificates(workdir / "certs")
    echo = EchoThread(tls=certs.server_context())
    try:
        gateway_config = GatewayConfig(clusters={DESTINATION: ("127.0.0.1", echo.port)})
        with start_gateway(gateway_config):
            yield Lab(certs, gateway_config.port, workdir)
    finally:
        echo.stop()


@dataclass(frozen=True)
class Exchange:
    echoed: bytes
    client_port: int
    raw_sent: int  # TLS bytes the client wrote
    raw_received: int  # TLS bytes the client read


def tls_exchange(port: int, context: ssl.SSLContext, payload: bytes, timeout: float = 15) -> Exchange:
    """TLS through the tunnel over memory BIOs, so the bytes on the wire can be counted."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="kubernetes.default.svc")
    sent = received = 0
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:

        def flush() -> None:
            nonlocal sent
            if data := outgoing.read():
                sock.sendall(data)
                sent += len(data)

        def pump() -> None:
            nonlocal received
            if time.monotonic() > deadline:
                raise TimeoutError("no echo in time")
            data = sock.recv(262144)
            if not data:
                raise ConnectionError("the proxy closed the tunnel")
            incoming.write(data)
            received += len(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                pump()
        tls.write(payload)
        flush()
        echoed = b""
        while len(echoed) < len(payload):
            try:
                echoed += tls.read(262144)
            except ssl.SSLWantReadError:
                flush()
                pump()
        return Exchange(echoed, sock.getsockname()[1], sent, received)


def refused(port: int, timeout: float = 15) -> bool:
    """A client's first bytes get nothing back and the connection ends (EOF or reset)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"\x16\x03\x01 not really a ClientHello")
        try:
            return sock.recv(65536) == b""
        except ConnectionResetError:
            return True


def access_lines(text: str) -> list[re.Match[str]]:
    lines = [line for line in text.splitlines() if line.startswith("[")]
    matches = [ACCESS_LINE.match(line) for line in lines]
    assert all(matches), lines
    return [m for m in matches if m is not None]


@dataclass
class Observation:
    echoed: list[bool]
    ready: int
    ready_v6: int
    not_found: int
    names_missing: list[str]
    # Per tunnel: rx minus the raw bytes the client wrote, tx minus what it read (0 or 1), upstream host.
    log_fields: list[tuple[int, int, str]]
    counters: dict[str, float]  # the Gardener counters whose values the workload decides
    downstream_bytes: tuple[int, int]  # tcp rx bytes - what clients wrote; tx bytes - what they read (0..)


# Counters among the 17 whose value the workload decides (the byte counters depend on TLS record sizes).
COUNTED = (
    "envoy_cluster_bind_errors", "envoy_cluster_lb_healthy_panic", "envoy_cluster_update_attempt",
    "envoy_cluster_update_failure", "envoy_cluster_upstream_cx_none_healthy", "envoy_listener_downstream_cx_destroy",
    "envoy_listener_downstream_cx_overflow", "envoy_listener_downstream_cx_total", "envoy_tcp_downstream_cx_no_route",
    "envoy_tcp_downstream_cx_total",
)  # fmt: skip
SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")


def gardener_samples(metrics: str, listen_port: int) -> dict[str, float]:
    """{name{labels}: value} of the tunnel's series (not the admin cluster's), the listener port as PORT."""
    found = {}
    for line in metrics.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) in NAMES:
            labels = (match.group(2) or "").replace(f"_{listen_port}", "_PORT")
            if "kube_apiserver" in labels or "_PORT" in labels:
                found[match.group(1) + labels] = float(match.group(3))
    return found


def observe(kind: str, lab: Lab) -> Observation:
    listen_port, metrics_port = free_port(), free_port()
    workdir = lab.workdir / kind
    workdir.mkdir(exist_ok=True)
    admin = Path(f"/tmp/apiproxy-admin-{os.getpid()}-{kind}.socket")  # a pipe path must stay short
    config = render_loopback(listen_port, metrics_port, lab.gateway_port, admin)
    context = lab.certs.client_context()
    try:
        with node_proxy(kind, config, workdir, metrics_port) as node:
            payloads = [os.urandom(size) for size in PAYLOAD_SIZES]
            exchanges = [tls_exchange(listen_port, context, payload) for payload in payloads]
            ready = get(f"http://127.0.0.1:{metrics_port}/ready")[0]
            ready_v6 = get(f"http://[::1]:{metrics_port}/ready")[0]
            not_found = get(f"http://127.0.0.1:{metrics_port}/stats")[0]
            metrics = get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
            deadline = time.monotonic() + 15
            while len(access_lines(node.stdout())) < len(exchanges) and time.monotonic() < deadline:
                time.sleep(0.05)
            lines = {int(m.group(7).rpartition(":")[2]): m for m in access_lines(node.stdout())}
    finally:
        admin.unlink(missing_ok=True)
    samples = gardener_samples(metrics, listen_port)
    sent, read = sum(e.raw_sent for e in exchanges), sum(e.raw_received for e in exchanges)
    tcp = '{envoy_tcp_prefix="kube_apiserver"}'
    log_fields = []
    for exchange in exchanges:
        line = lines[exchange.client_port]
        rx, tx = int(line.group(4)), int(line.group(5))
        # What the proxy read from the client is exactly what the client wrote; what it sent the client is
        # what the client read, plus at most a close_notify still in flight at close.
        log_fields.append((rx - exchange.raw_sent, min(tx - exchange.raw_received, 1), line.group(8)))
    return Observation(
        echoed=[e.echoed == p for e, p in zip(exchanges, payloads, strict=True)],
        ready=ready,
        ready_v6=ready_v6,
        not_found=not_found,
        names_missing=[
            name for name in NAMES if f"\n{name}{{" not in metrics and f"\n{name} " not in metrics
        ],
        log_fields=log_fields,
        counters={name: value for name, value in samples.items() if name.split("{")[0] in COUNTED},
        downstream_bytes=(
            int(samples[f"envoy_tcp_downstream_cx_rx_bytes_total{tcp}"]) - sent,
            min(int(samples[f"envoy_tcp_downstream_cx_tx_bytes_total{tcp}"]) - read, 1),
        ),
    )


def test_same_observable_results_as_envoy(lab: Lab) -> None:
    envoy, apiproxy = (observe(kind, lab) for kind in KINDS)
    assert envoy.echoed == [True] * len(PAYLOAD_SIZES)
    assert apiproxy == envoy
    assert (apiproxy.ready, apiproxy.ready_v6, apiproxy.not_found, apiproxy.names_missing) == (
        200,
        200,
        404,
        [],
    )
    assert [fields[:2] for fields in apiproxy.log_fields] == [(0, 0)] * len(PAYLOAD_SIZES)
    assert apiproxy.counters['envoy_tcp_downstream_cx_total{envoy_tcp_prefix="kube_apiserver"}'] == len(
        PAYLOAD_SIZES
    )
    assert apiproxy.downstream_bytes == (0, 0)
    assert sorted(name.split("{")[0] for name in apiproxy.counters) == sorted(COUNTED)


def refusals(kind: str, lab: Lab) -> tuple[list[bool], list[tuple[str, str, str, str]]]:
    listen_port, metrics_port = free_port(), free_port()
    admin = Path(f"/tmp/apiproxy-admin-{os.getpid()}-{kind}-wrong.socket")
    wrong = "outbound|443||etcd.shoot--foo--bar.svc.cluster.local"  # the gateway answers 301
    config = render_loopback(listen_port, metrics_port, lab.gateway_port, admin, destination=wrong)
    try:
        with node_proxy(kind, config, lab.workdir / f"{kind}-wrong", metrics_port) as node:
            closed = [refused(listen_port) for _ in range(3)]
            deadline = time.monotonic() + 15
            while len(access_lines(node.stdout())) < len(closed) and time.monotonic() < deadline:
                time.sleep(0.05)
            # RESPONSE_FLAGS, rx, tx, upstream host (RESPONSE_CODE: Envoy's tcp_proxy prints 0, apiproxy
            # the gateway's answer, 301; see apiproxy.monitoring.access_log).
            lines = [(m.group(3), m.group(4), m.group(5), m.group(8)) for m in access_lines(node.stdout())]
    finally:
        admin.unlink(missing_ok=True)
    return closed, lines


def test_a_wrong_destination_is_refused_as_envoy_refuses_it(lab: Lab) -> None:
    envoy, apiproxy = (refusals(kind, lab) for kind in KINDS)
    assert envoy[0] == [True] * 3
    assert apiproxy == envoy
    assert apiproxy[1] == [("UF,URX", "0", "0", f"127.0.0.1:{lab.gateway_port}")] * 3


def test_drain_time_s_bounds_the_drain_on_sigterm(lab: Lab, tmp_path: Path) -> None:
    """Envoy's --drain-time-s is apiproxy's drain deadline: an open tunnel is cut after it, exit 0."""
    listen_port, metrics_port = free_port(), free_port()
    config = render_loopback(listen_port, metrics_port, lab.gateway_port, tmp_path / "admin.socket")
    with (
        node_proxy("apiproxy", config, tmp_path, metrics_port, extra_args=("--drain-time-s", "1")) as node,
        socket.create_connection(("127.0.0.1", listen_port), timeout=10) as held,
    ):
        tls_exchange(listen_port, lab.certs.client_context(), b"x")  # the tunnel path works
        held.sendall(b"\x16\x03\x01")  # an open tunnel, mid ClientHello
        time.sleep(0.3)
        started = time.monotonic()
        os.kill(node.process.pid, signal.SIGTERM)
        assert node.process.wait(15) == 0
        assert 0.9 < time.monotonic() - started < 10
    assert "drained; 1 tunnels were cut at the deadline" in node.stderr()
