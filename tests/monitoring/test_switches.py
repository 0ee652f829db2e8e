"""The monitoring switches of `apiproxy run`: access log off, Envoy names off, JSON application logs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .lab import apiproxy, echo_and_gateway, echo_tunnel, get

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def gateway_port() -> Iterator[int]:
    with echo_and_gateway() as (_, gateway, _):
        yield gateway.port


def test_no_access_log_and_no_envoy_names(gateway_port: int) -> None:
    with apiproxy(gateway_port, "--no-access-log", "--no-envoy-compatible-metrics") as (proxy, port, metrics):
        assert echo_tunnel(port, b"hello") == b"hello"
        scrape = get(metrics, "/metrics")[1]
        assert "apiproxy_tunnels_opened_total 1.0" in scrape
        assert "envoy_" not in scrape
        proxy.stop()
        assert proxy.stdout() == ""


def test_json_logs_on_stderr_and_a_debug_line_per_tunnel_with_v(gateway_port: int) -> None:
    with apiproxy(gateway_port, "--log-format", "json", "-v") as (proxy, port, _):
        assert echo_tunnel(port, b"hello") == b"hello"
        proxy.stop()
        entries = [json.loads(line) for line in proxy.stderr().splitlines()]
        assert {"ts", "level", "logger", "msg"} <= set(entries[0])
        closed = [e for e in entries if e["msg"].startswith("tunnel from 127.0.0.1:")]
        assert len(closed) == 1 and closed[0]["level"] == "debug"
        assert "(completed): 5 bytes in, 5 out" in closed[0]["msg"]
        # stdout holds the access log only
        assert [line.split("] ", 1)[1].split(" ")[:2] for line in proxy.stdout().splitlines()] == [
            ["200", "-"]
        ]


def test_metrics_off(gateway_port: int) -> None:
    with apiproxy(gateway_port, "--metrics-address", "off", metrics_address=False) as (proxy, port, _):
        assert echo_tunnel(port, b"hello") == b"hello"
        assert "monitoring on" not in proxy.stderr()
