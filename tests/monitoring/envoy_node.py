"""The real Envoy as the node proxy, with Gardener's config (shared/examples/gardener-envoy.yaml) rendered
for loopback: listener and gateway on 127.0.0.1 and free ports, admin on a TCP port, no metrics listener
(the admin's /stats/prometheus is what Gardener's /metrics route serves).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from lab.gateway import EnvoyProcess, free_port

# A copy of the project's example of Gardener's rendered envoy.yaml.
GARDENER_ENVOY_YAML = Path(__file__).with_name("gardener-envoy.yaml")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def render(
    source: Path, listen_port: int, gateway_port: int, admin_port: int, connection_limit: int
) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    layer = config["layered_runtime"]["layers"][0]["static_layer"]
    layer["envoy.resource_limits.listener.kube_apiserver.connection_limit"] = connection_limit
    config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}}
    # Histograms reach /stats/prometheus at a stats flush; flush at each admin request instead of every 5 s.
    config["stats_flush_on_admin"] = True
    resources = config["static_resources"]
    resources["listeners"] = [lst for lst in resources["listeners"] if lst["name"] == "kube_apiserver"]
    resources["listeners"][0]["address"]["socket_address"].update(address="127.0.0.1", port_value=listen_port)
    resources["clusters"] = [c for c in resources["clusters"] if c["name"] == "kube_apiserver"]
    endpoint = resources["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"].update(address="127.0.0.1", port_value=gateway_port)
    return config


def start_node_envoy(gateway_port: int, connection_limit: int) -> tuple[EnvoyProcess, int]:
    """Envoy with Gardener's config in front of the gateway: (process, listen port)."""
    listen_port, admin_port = free_port(), free_port()
    config = render(GARDENER_ENVOY_YAML, listen_port, gateway_port, admin_port, connection_limit)
    # Access-log lines reach the log file within 50 ms instead of Envoy's default 10 s.
    envoy = EnvoyProcess(config, admin_port, concurrency=2, extra_args=["--file-flush-interval-msec", "50"])
    return envoy.start(), listen_port


def samples(text: str) -> dict[tuple[str, str], float]:
    """Prometheus text -> {(sample name, label text): value}."""
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            found[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return found


def envoy_prometheus(envoy: EnvoyProcess) -> str:
    envoy.admin("/stats/prometheus")  # flushes histograms (stats_flush_on_admin); the next read has them
    return envoy.admin("/stats/prometheus")
