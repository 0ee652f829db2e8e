"""The tunnel listener's tcp_proxy filter: its stats prefix, its cluster (the seed gateway), how each
connection is carried there (the tunneling_config's CONNECT, or the cluster's PROXY v2 header), the idle
timeout and the access log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import (
    ConfigError,
    parse_authority,
    parse_connect_header_name,
    parse_header_name,
    parse_header_value,
)
from ..documents import show
from .access_log import read_access_log
from .cluster import Gateway, read_gateway
from .fields import HEADER_FIELDS, HEADER_OPTION_FIELDS, TCP_PROXY_FIELDS, TUNNELING_FIELDS
from .message import BootstrapError, Message

ENVOY_IDLE_TIMEOUT = 3600.0  # tcp_proxy idle_timeout
# idle_timeout: 0s disables the timeout in Envoy; a year stands for "never" on a timer.
NO_IDLE_TIMEOUT = 365 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class TcpProxy:
    stat_prefix: str
    cluster: str
    gateway: Gateway
    # The CONNECT request-target and extra headers; empty in PROXY v2 mode (gateway.proxy_protocol).
    connect_authority: str
    connect_headers: tuple[tuple[str, str], ...]
    idle_timeout: float
    access_log_format: str | None


def read_tcp_proxy(tcp_proxy: Message, clusters: Mapping[str, Message]) -> TcpProxy:
    tcp_proxy.check(TCP_PROXY_FIELDS)
    stat_prefix = tcp_proxy.string("stat_prefix")
    if not stat_prefix:
        raise BootstrapError(tcp_proxy.at("stat_prefix"), "required")
    cluster_name = tcp_proxy.string("cluster")
    if not cluster_name:
        raise BootstrapError(tcp_proxy.at("cluster"), "required")
    cluster = clusters.get(cluster_name)
    if cluster is None:
        raise BootstrapError(
            tcp_proxy.at("cluster"),
            f"no cluster named {show(cluster_name)} in static_resources.clusters: not supported (Envoy would close every connection)",
        )
    gateway = read_gateway(cluster)
    authority = ""
    headers: tuple[tuple[str, str], ...] = ()
    tunneling = tcp_proxy.message("tunneling_config")
    if tunneling is not None:
        if gateway.proxy_protocol:
            raise BootstrapError(
                cluster.at("transport_socket"),
                "a PROXY protocol header before a CONNECT: not supported (CONNECT mode never sends PROXY)",
            )
        authority, headers = _tunneling(tunneling)
    elif not gateway.proxy_protocol:
        raise BootstrapError(
            tcp_proxy.at("tunneling_config"),
            "required: apiproxy carries connections over HTTP CONNECT (or, with an upstream_proxy_protocol transport socket, PROXY v2), not plain TCP",
        )
    idle = tcp_proxy.duration("idle_timeout")
    return TcpProxy(
        stat_prefix=stat_prefix,
        cluster=cluster_name,
        gateway=gateway,
        connect_authority=authority,
        connect_headers=headers,
        idle_timeout=ENVOY_IDLE_TIMEOUT if idle is None else (idle or NO_IDLE_TIMEOUT),
        access_log_format=read_access_log(tcp_proxy),
    )


def _tunneling(tunneling: Message) -> tuple[str, tuple[tuple[str, str], ...]]:
    tunneling.check(TUNNELING_FIELDS)
    if tunneling.boolean("use_post"):
        raise BootstrapError(tunneling.at("use_post"), "true: not supported (CONNECT only)")
    hostname = tunneling.string("hostname")
    if not hostname:
        raise BootstrapError(tunneling.at("hostname"), "required")
    if "%" in hostname:
        raise BootstrapError(
            tunneling.at("hostname"), "command operators (%...%): not supported, expected a fixed HOST:PORT"
        )
    try:
        authority = parse_authority(tunneling.at("hostname"), hostname)
    except ConfigError as error:
        raise BootstrapError(error.option, f"expected HOST:PORT, got {show(hostname)}") from None
    headers: list[tuple[str, str]] = []
    for option in tunneling.messages("headers_to_add"):
        option.check(HEADER_OPTION_FIELDS)
        header = option.require("header")
        header.check(HEADER_FIELDS)
        name, value = header.string("key"), header.string("value")
        try:
            parse_header_name(header.at("key"), name)
        except ConfigError as error:
            raise BootstrapError(error.option, f"{error.expected}, got {show(name)}") from None
        try:
            parse_header_value(header.at("value"), value)
        except ConfigError as error:
            # Not the value: a header such as Proxy-Authorization carries a credential.
            raise BootstrapError(error.option, f"{error.expected}, got {len(value)} characters") from None
        if name.lower() == "host":
            raise BootstrapError(header.at("key"), "host cannot be overridden (Envoy refuses it too)")
        try:
            parse_connect_header_name(header.at("key"), name, proxy_headers=True)
        except ConfigError as error:
            raise BootstrapError(error.option, f"{error.expected}, got {show(name)}") from None
        if "%" in value:
            raise BootstrapError(
                header.at("value"), "command operators (%...%): not supported, expected a fixed value"
            )
        headers.append((name, value))
    if len({name.lower() for name, _ in headers}) != len(headers):
        raise BootstrapError(tunneling.at("headers_to_add"), "the same header twice: not supported")
    return authority, tuple(headers)
