"""The monitoring port of a running `apiproxy run` after real tunnels through the lab gateway: what it
serves, that Prometheus' own tools accept it, and the access-log line of each tunnel. Then the endpoint
in-process: the HTTP it speaks (one request, one answer, close), its deadline, its slots, its threads.
The port under attack from pods: tests/faults/test_monitoring_port.py."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apiproxy.monitoring.http import (
    DEADLINE,
    HEAD_LIMIT,
    LOOPBACK_SLOTS,
    PER_SOURCE,
    MonitoringEndpoint,
    head_end,
    is_loopback,
)
from lab.gateway import free_port
from lab.proxy import ApiproxyProcess

from .lab import apiproxy, echo_and_gateway, echo_tunnel, get, wait_for

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


@pytest.mark.envoy
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


@pytest.mark.envoy
@pytest.mark.parametrize(
    "path", ["/", "/metrics/", "/readyz", "/stats/prometheus", "/ready/x", "/favicon.ico"]
)
def test_everything_else_is_404(running: Running, path: str) -> None:
    assert get(running.metrics_port, path)[0] == 404


@pytest.mark.envoy
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


@pytest.mark.envoy
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


@pytest.mark.envoy
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


@pytest.mark.envoy
def test_idle_connections_are_capped_per_source(running: Running) -> None:
    """PER_SOURCE idle connections from one address: the next from it is refused at once, another address
    is still answered, and once they close the first address is answered again."""
    idle = [connect_from("127.0.0.1", running.metrics_port) for _ in range(PER_SOURCE)]
    try:
        wait_for(lambda: get_or_none(running.metrics_port) is None, timeout=5)
        assert get_from("127.0.0.3", running.metrics_port)[0] == 200
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: get_or_none(running.metrics_port) == 200, timeout=5)


def get_or_none(port: int) -> int | None:
    try:
        return get(port, "/ready", timeout=2)[0]
    except (OSError, http.client.HTTPException):
        return None


# --- the endpoint in-process: the protocol it speaks, its deadline and its slots ----------------------------


class Endpoint:
    """A MonitoringEndpoint on 127.0.0.1 whose readiness and exposition the test sets."""

    def __init__(self) -> None:
        self.not_ready: str | None = None
        self.exposition: Callable[[], bytes] = lambda: b"# TYPE up gauge\nup 1\n"
        self.endpoint = MonitoringEndpoint([("127.0.0.1", 0)], lambda: self.not_ready, self._render)

    def _render(self) -> bytes:
        return self.exposition()

    @property
    def port(self) -> int:
        return self.endpoint.bound[0][1]


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    served = Endpoint()
    served.endpoint.start()
    try:
        yield served
    finally:
        served.endpoint.stop()


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def exchange(port: int, request: bytes, source: str = "127.0.0.1") -> bytes:
    """Send `request`, read until the server closes (the endpoint closes after every answer)."""
    with connect_from(source, port) as sock:
        sock.sendall(request)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return answer


def get_from(source: str, port: int, path: str = "/ready") -> tuple[int, bytes]:
    answer = exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), source)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def head_of(size: int) -> bytes:
    """A GET /ready head of exactly `size` bytes."""
    start, end = b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"p" * (size - len(start) - len(end)) + end


SMUGGLED = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"

# request -> (status, the body or a part of the answer it must contain)
ANSWERS: dict[str, tuple[bytes, int, bytes]] = {
    "ready": (b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n", 200, b"\r\n\r\nready\n"),
    "query_ignored": (b"GET /ready?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n", 200, b"ready\n"),
    "http_1_0": (b"GET /ready HTTP/1.0\r\n\r\n", 200, b"ready\n"),
    "bare_lf": (b"GET /ready HTTP/1.1\nHost: x\n\n", 200, b"ready\n"),
    "metrics": (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200, b"Content-Type: text/plain; version=0.0.4"),
    "head": (b"HEAD /ready HTTP/1.1\r\nHost: x\r\n\r\n", 200, b"Content-Length: 6\r\nConnection: close\r\n\r\n"),
    "unknown_path": (b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", 404, b"not found\n"),
    "post": (b"POST /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, b"Allow: GET, HEAD"),
    "no_host": (b"GET /ready HTTP/1.1\r\n\r\n", 400, b"bad request"),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, b"bad request"),
    "http_2": (b"GET /ready HTTP/2.0\r\nHost: x\r\n\r\n", 505, b""),
    "empty_body": (b"GET /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 200, b"ready\n"),
    "body": (b"GET /ready HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED),
             400, b"bad request"),
    "chunked": (b"GET /ready HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, b""),
    "head_at_the_limit": (head_of(HEAD_LIMIT), 200, b"ready\n"),
    "head_over_the_limit": (head_of(HEAD_LIMIT + 1), 431, b"request head too large"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ANSWERS))
def test_one_request_one_answer_then_close(endpoint: Endpoint, case: str) -> None:
    request, status, expected = ANSWERS[case]
    answer = exchange(endpoint.port, request)
    assert re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer) == [str(status).encode()], answer[:300]
    assert b"\r\nConnection: close\r\n" in answer
    assert expected in answer, answer[:300]
    head, _, body = answer.partition(b"\r\n\r\n")
    if not request.startswith(b"HEAD"):
        assert f"Content-Length: {len(body)}\r\n".encode() in head + b"\r\n"


def test_not_ready_is_503_with_the_reason(endpoint: Endpoint) -> None:
    endpoint.not_ready = "draining"
    assert get_from("127.0.0.1", endpoint.port) == (503, b"not ready: draining\n")


def test_a_head_that_never_ends_is_dropped_at_the_deadline(endpoint: Endpoint) -> None:
    """One header byte every 0.5 s: the deadline counts from accept, not from the last byte."""
    with connect_from("127.0.0.1", endpoint.port) as sock:
        sock.sendall(b"GET /ready HTTP/1.1\r\n")
        started, answer = time.monotonic(), b""
        with contextlib.suppress(OSError):
            while time.monotonic() - started < DEADLINE + 3:
                sock.sendall(b"X")
                ready = select.select([sock], [], [], 0.5)[0]
                if ready and not (data := sock.recv(4096)):
                    break
                answer += data if ready else b""
    assert time.monotonic() - started < DEADLINE + 3, "still open long after the deadline"
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert endpoint.endpoint.statistics()["deadline"] == 1


def test_a_source_over_its_cap_is_refused_and_others_are_not(endpoint: Endpoint) -> None:
    idle = [connect_from("127.0.0.2", endpoint.port) for _ in range(PER_SOURCE)]
    try:
        # All of them accepted first: otherwise the extra one may be, and one of these refused instead.
        wait_for(lambda: endpoint.endpoint.statistics().get("accepted") == PER_SOURCE, timeout=5)
        # Reset at accept, before it sends anything (the reset may beat connect() returning).
        with pytest.raises(ConnectionResetError), connect_from("127.0.0.2", endpoint.port) as extra:
            extra.recv(4096)
        assert get_from("127.0.0.1", endpoint.port)[0] == 200
    finally:
        for sock in idle:
            sock.close()
    assert endpoint.endpoint.statistics()["refused_source_cap"] == 1


def test_a_full_pool_makes_room_by_evicting_its_oldest_silent_connection(endpoint: Endpoint) -> None:
    sources = [f"127.0.0.{10 + i}" for i in range(LOOPBACK_SLOTS // PER_SOURCE)]
    idle = [connect_from(source, endpoint.port) for source in sources for _ in range(PER_SOURCE)]
    try:
        wait_for(lambda: endpoint.endpoint.statistics().get("accepted") == LOOPBACK_SLOTS, timeout=5)
        assert get_from("127.0.0.1", endpoint.port)[0] == 200
        idle[0].settimeout(5)
        with pytest.raises(ConnectionResetError):  # the oldest made room
            idle[0].recv(1)
    finally:
        for sock in idle:
            sock.close()
    assert endpoint.endpoint.statistics()["evicted"] == 1


def test_a_failing_or_stuck_exposition_does_not_hold_up_ready(endpoint: Endpoint) -> None:
    def broken() -> bytes:
        raise RuntimeError("broken collector")

    endpoint.exposition = broken
    assert get_from("127.0.0.1", endpoint.port, "/metrics")[0] == 500
    release = threading.Event()

    def stuck() -> bytes:
        release.wait(10)
        return b"up 1\n"

    endpoint.exposition = stuck
    with connect_from("127.0.0.1", endpoint.port) as scrape:
        scrape.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert get_from("127.0.0.1", endpoint.port) == (200, b"ready\n")
        finally:
            release.set()
        assert scrape.recv(4096).startswith(b"HTTP/1.1 200 OK")


def test_scrapes_waiting_together_share_one_rendering(endpoint: Endpoint) -> None:
    release, renderings = threading.Event(), []

    def slow() -> bytes:
        renderings.append(1)
        release.wait(10)
        return b"up 1\n"

    endpoint.exposition = slow
    scrapes = [connect_from("127.0.0.1", endpoint.port) for _ in range(4)]
    try:
        scrapes[0].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: len(renderings) == 1, timeout=5)
        for scrape in scrapes[1:]:  # these arrive during the first rendering: they wait for one more
            scrape.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: len(endpoint.endpoint._renderer._waiting) == 3, timeout=5)  # read, queued
        release.set()
        answers = [scrape.recv(4096) for scrape in scrapes]
    finally:
        for scrape in scrapes:
            scrape.close()
    assert all(answer.startswith(b"HTTP/1.1 200 OK") for answer in answers), answers
    assert len(renderings) == 2


class Lines(logging.Handler):
    """The messages of one logger, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_turned_away_connections_are_logged_in_one_line_at_most_a_minute(endpoint: Endpoint) -> None:
    # Read from the module's logger itself, not through the root logger's handlers (caplog), and waited
    # for: the endpoint's thread writes the line (once, in a CI run, caplog held none at the end).
    logger = logging.getLogger("apiproxy.monitoring.http")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        for _ in range(3):
            exchange(endpoint.port, b"BREW /coffee HTCPCP/1.0\r\n\r\n")
        wait_for(lambda: endpoint.endpoint.statistics().get("bad_request") == 3, timeout=5)
        exchange(endpoint.port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: bool(handler.lines), timeout=5)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = handler.lines
    assert len(lines) == 1, lines
    # The first turned-away connection is reported at once; the selector thread may have seen a second or
    # third by the time it writes the line, never more than one line in the minute.
    assert re.search(r"turned connections away: [123] refused \(malformed", lines[0]), lines


def test_ready_via_urllib_after_a_refused_request(endpoint: Endpoint) -> None:
    exchange(endpoint.port, b"GET /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/ready", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Connection"] == "close"


def test_a_bug_on_one_connection_closes_it_and_the_endpoint_goes_on(endpoint: Endpoint) -> None:
    endpoint.exposition = lambda: "not bytes"  # type: ignore[assignment,return-value]
    with pytest.raises(ConnectionResetError):
        exchange(endpoint.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert get_from("127.0.0.1", endpoint.port) == (200, b"ready\n")
    assert endpoint.endpoint.statistics()["failed"] == 1


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.255.255.254", True), ("::1", True), ("::ffff:127.0.0.2", True),
     ("10.0.0.1", False), ("128.0.0.1", False), ("::ffff:10.0.0.1", False), ("fe80::1%eth0", False),
     ("1270::1", False), ("::2", False)],
)  # fmt: skip
def test_loopback_sources(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_end_of_a_head_is_found_whatever_the_pieces() -> None:
    head = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
    for step in (1, 2, 3, 7):
        buffer, end = bytearray(), -1
        for start in range(0, len(head) + 5, step):
            scanned = len(buffer)
            buffer += (head + b"BODY")[start : start + step]
            if (end := head_end(buffer, scanned)) >= 0:
                break
        assert end == len(head), step
