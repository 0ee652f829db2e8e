"""Gardener's example envoy.yaml (shared/examples/gardener-envoy.yaml, copied next to this file), loaded as a
dict the tests mutate, and rendered for loopback: free ports, the gateway on `localhost`, the admin on a
temporary pipe.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

EXAMPLE = Path(__file__).with_name("gardener-envoy.yaml")


def example() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return document


def render_loopback(
    listen_port: int,
    metrics_port: int,
    gateway_port: int,
    admin_socket: Path,
    *,
    destination: str | None = None,
) -> dict[str, Any]:
    """The example with every address on loopback; nothing else changes (the gateway stays a DNS name)."""
    config = copy.deepcopy(example())
    config["admin"]["address"]["pipe"]["path"] = str(admin_socket)
    listeners = {listener["name"]: listener for listener in config["static_resources"]["listeners"]}
    listeners["kube_apiserver"]["address"]["socket_address"].update(
        address="127.0.0.1", port_value=listen_port
    )
    metrics = listeners["metrics"]
    metrics["address"]["socket_address"].update(address="127.0.0.1", port_value=metrics_port)
    metrics["additional_addresses"][0]["address"]["socket_address"].update(
        address="::1", port_value=metrics_port
    )
    if destination is not None:
        tcp_proxy = listeners["kube_apiserver"]["filter_chains"][0]["filters"][0]["typed_config"]
        tcp_proxy["tunneling_config"]["headers_to_add"][0]["header"]["value"] = destination
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    endpoint = clusters["kube_apiserver"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    # A name, so the DNS path (LOGICAL_DNS, V4_ONLY) is exercised as in production.
    endpoint["address"]["socket_address"].update(address="localhost", port_value=gateway_port)
    admin_endpoint = clusters["uds_admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    admin_endpoint["address"]["pipe"]["path"] = str(admin_socket)
    return config


def tcp_proxy_of(config: dict[str, Any]) -> dict[str, Any]:
    proxy: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return proxy


def listener_of(config: dict[str, Any], index: int = 0) -> dict[str, Any]:
    listener: dict[str, Any] = config["static_resources"]["listeners"][index]
    return listener


def cluster_of(config: dict[str, Any], index: int = 0) -> dict[str, Any]:
    cluster: dict[str, Any] = config["static_resources"]["clusters"][index]
    return cluster


def tunneling_of(config: dict[str, Any]) -> dict[str, Any]:
    tunneling: dict[str, Any] = tcp_proxy_of(config)["tunneling_config"]
    return tunneling
