"""The monitoring port of a running `apiproxy run` after real tunnels through the lab gateway: what it
serves, that Prometheus' own tools accept it, and the access-log line of each tunnel."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apiproxy.monitoring.http import MAX_CONCURRENT
from lab.gateway import free_port
from lab.proxy import ApiproxyProcess

from .lab import apiproxy, echo_and_gateway, echo_tunnel, get, wait_for

pytestmark = pytest.mark.envoy

SIZES = (1, 1000, 70_000)  # one tunnel each: bytes sent, echoed back


@dataclass
class Running:
    proxy: ApiproxyProcess
    listen_port: int
    metrics_port: int
    gateway_port: int


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    with echo_and_gateway() as (_, gateway, _), apiproxy(gateway.port) as (proxy, listen_port, metrics_port):
        for size in SIZES:
            payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            assert echo_tunnel(listen_port, payload) == payload
        wait_for(lambda: len(proxy.stdout().splitlines()) == len(SIZES))
        yield Running(proxy, listen_port, metrics_port, gateway.port)


def test_ready_and_metrics_answer(running: Running) -> None:
    assert get(running.metrics_port, "/ready") == (200, "ready\n")
    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = response.read().decode()
    assert f"apiproxy_tunnels_opened_total {len(SIZES)}.0" in body
    assert f'apiproxy_tunnels_closed_total{{outcome="success",reason="completed"}} {len(SIZES)}.0' in body
    assert f"apiproxy_client_received_bytes_total {sum(SIZES)}.0" in body
    assert f"apiproxy_client_sent_bytes_total {sum(SIZES)}.0" in body
    assert (
        f'envoy_listener_downstream_cx_total{{envoy_listener_address="127.0.0.1_{running.listen_port}"}} 3'
        in body
    )


@pytest.mark.parametrize(
    "path", ["/", "/metrics/", "/readyz", "/stats/prometheus", "/ready/x", "/favicon.ico"]
)
def test_everything_else_is_404(running: Running, path: str) -> None:
    assert get(running.metrics_port, path)[0] == 404


def test_access_log_line_per_tunnel(running: Running) -> None:
    lines = running.proxy.stdout().splitlines()
    pattern = re.compile(
        r'^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] (\d+) (\S+) (\d+) rx (\d+) tx (\d+)ms "127\.0\.0\.1:(\d+)" "([^"]+)"$'
    )
    parsed = [pattern.match(line) for line in lines]
    assert all(parsed), lines
    assert sorted(int(m.group(4)) for m in parsed if m) == sorted(SIZES)  # bytes from the client
    for match in parsed:
        assert match is not None
        assert match.group(2) == "200"  # the gateway's answer to the CONNECT
        assert match.group(3) == "-"
        assert match.group(4) == match.group(5)  # echoed: as many bytes back
        assert match.group(8) == f"127.0.0.1:{running.gateway_port}"
    # Application logs stay on stderr.
    assert "listening on" not in running.proxy.stdout()


def test_promtool_accepts_a_live_scrape(running: Running) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; scripts/install-system-deps.sh)")
    scrape = get(running.metrics_port, "/metrics")[1]
    done = subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=30, check=False
    )
    findings = (done.stdout + done.stderr).strip()
    # 0: clean; 3: lint findings (expected: Envoy's own names break the naming rules, as in Envoy's output).
    assert done.returncode in (0, 3), findings
    assert "parsing error" not in findings and "error while" not in findings, findings
    ours = [line for line in findings.splitlines() if "apiproxy_" in line]
    assert not ours, ours
    assert all(line.startswith("envoy_") for line in findings.splitlines()), findings


def test_prometheus_scrapes_the_tunnel_count(running: Running) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package prometheus; scripts/install-system-deps.sh)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="apiproxy-prometheus-") as directory:
        config = Path(directory) / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "- job_name: apiproxy\n"
            f"  static_configs: [{{targets: ['127.0.0.1:{running.metrics_port}']}}]\n"
        )
        with (Path(directory) / "prometheus.log").open("wb") as log:
            process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={directory}/data",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            query = 'sum(apiproxy_tunnels_closed_total{job="apiproxy",outcome="success"})'
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
            value = None
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and value != float(len(SIZES)):
                assert process.poll() is None, (Path(directory) / "prometheus.log").read_text()[-2000:]
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        result = json.loads(response.read())["data"]["result"]
                    value = float(result[0]["value"][1]) if result else None
                except (OSError, ValueError):
                    pass
                time.sleep(0.5)
            assert value == float(len(SIZES))
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def test_both_default_addresses_bind() -> None:
    """Without --metrics-address: 0.0.0.0:16910 and [::]:16910 (here on free ports: 16910 may be taken)."""
    port = free_port()
    has_v6 = socket.has_ipv6
    extra = ["--metrics-address", f"0.0.0.0:{port}"] + (
        ["--metrics-address", f"[::]:{port}"] if has_v6 else []
    )
    with ApiproxyProcess(
        [
            "run",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--upstream",
            "127.0.0.1:9",
            "--destination",
            "x",
            *extra,
        ]
    ) as proxy:
        assert get(port, "/ready")[0] == 200
        if has_v6:
            with urllib.request.urlopen(f"http://[::1]:{port}/ready", timeout=5) as response:
                assert response.status == 200
        assert "monitoring on 0.0.0.0:" in proxy.stderr()


def test_metrics_address_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*ApiproxyProcess([]).command, "run", "--listen", f"127.0.0.1:{free_port()}", "--upstream",
             "127.0.0.1:9", "--destination", "x", "--metrics-address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "--metrics-address: expected an address this host can listen on" in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr


def test_idle_connections_cannot_pile_up_threads(running: Running) -> None:
    idle = [
        socket.create_connection(("127.0.0.1", running.metrics_port), timeout=5)
        for _ in range(MAX_CONCURRENT)
    ]
    try:
        wait_for(
            lambda: get_or_none(running.metrics_port) is None, timeout=5
        )  # the next one is closed at once
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: get_or_none(running.metrics_port) == 200, timeout=5)


def get_or_none(port: int) -> int | None:
    try:
        return get(port, "/ready", timeout=2)[0]
    except (OSError, http.client.HTTPException):
        return None
