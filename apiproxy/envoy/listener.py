"""The static listeners: exactly one whose one network filter is a tcp_proxy (the tunnel listener, one
address), and any number of metrics listeners (an http_connection_manager in front of the admin, with
additional addresses). Listener options apiproxy cannot honour are refused here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import Endpoint
from ..documents import show
from .address import LISTENER, socket_address
from .fields import (
    ADDITIONAL_ADDRESS_FIELDS,
    FILTER_CHAIN_FIELDS,
    FILTER_FIELDS,
    HTTP_CONNECTION_MANAGER,
    LISTENER_FIELDS,
    TCP_PROXY,
)
from .message import BootstrapError, Message
from .metrics import Admin, check_metrics_routes

# Boolean listener fields whose default is harmless and whose other value apiproxy cannot honour.
SWITCHES = (("use_original_dst", False), ("transparent", False), ("bind_to_port", True))


@dataclass(frozen=True, slots=True)
class TunnelListener:
    message: Message
    name: str
    listen: Endpoint
    tcp_proxy: Message


@dataclass(frozen=True, slots=True)
class Listeners:
    tunnel: TunnelListener
    # Every metrics listener's addresses, and their config paths (for errors at bind time).
    metrics: tuple[Endpoint, ...]
    metrics_paths: tuple[str, ...]


def read_listeners(resources: Message, clusters: Mapping[str, Message], admin: Admin) -> Listeners:
    tunnels: list[TunnelListener] = []
    metrics: list[Endpoint] = []
    metrics_paths: list[str] = []
    names: set[str] = set()
    for listener in resources.messages("listeners"):
        listener.check(LISTENER_FIELDS)
        name = listener.string("name")
        if name and name in names:
            raise BootstrapError(listener.at("name"), f"duplicate listener name {show(name)}")
        names.add(name)
        for switch, harmless in SWITCHES:
            if listener.has(switch) and listener.boolean(switch) != harmless:
                raise BootstrapError(listener.at(switch), f"{str(not harmless).lower()}: not supported")
        filter_ = _single_filter(_single_filter_chain(listener))
        typed = filter_.require("typed_config")
        kind = typed.type_name()
        if kind == TCP_PROXY:
            if listener.has("additional_addresses"):
                raise BootstrapError(
                    listener.at("additional_addresses"),
                    "not supported on the tcp_proxy listener (one address)",
                )
            tunnels.append(
                TunnelListener(listener, name, socket_address(listener.require("address"), LISTENER), typed)
            )
        elif kind == HTTP_CONNECTION_MANAGER:
            check_metrics_routes(typed, clusters, admin)
            metrics.append(socket_address(listener.require("address"), LISTENER))
            metrics_paths.append(listener.at("address"))
            for extra in listener.messages("additional_addresses"):
                extra.check(ADDITIONAL_ADDRESS_FIELDS)
                metrics.append(socket_address(extra.require("address"), LISTENER))
        else:
            raise BootstrapError(
                typed.at("@type"),
                f"network filter {show(kind or filter_.string('name'))}: not supported (only tcp_proxy, and http_connection_manager routing /metrics and /ready to the admin)",
            )
    if not tunnels:
        raise BootstrapError(
            "static_resources.listeners", "no listener with a tcp_proxy filter: nothing for apiproxy to serve"
        )
    if len(tunnels) > 1:
        raise BootstrapError(
            tunnels[1].message.path, "a second tcp_proxy listener: not supported (apiproxy serves one)"
        )
    return Listeners(tunnels[0], tuple(metrics), tuple(metrics_paths))


def _single_filter_chain(listener: Message) -> Message:
    chains = list(listener.messages("filter_chains"))
    if len(chains) != 1:
        raise BootstrapError(
            listener.at("filter_chains"), f"expected exactly one filter chain, got {len(chains)}"
        )
    chain = chains[0]
    chain.check(FILTER_CHAIN_FIELDS)
    if chain.fields.get("filter_chain_match"):  # an empty match is no match criterion at all
        raise BootstrapError(
            chain.at("filter_chain_match"), "not supported (one filter chain for every connection)"
        )
    return chain


def _single_filter(chain: Message) -> Message:
    filters = list(chain.messages("filters"))
    if len(filters) != 1:
        raise BootstrapError(
            chain.at("filters"),
            "expected exactly one network filter (tcp_proxy, or the metrics listener's http_connection_manager)",
        )
    filters[0].check(FILTER_FIELDS)
    return filters[0]
