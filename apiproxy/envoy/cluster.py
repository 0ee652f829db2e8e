"""The clusters: the tcp_proxy's (the seed gateway: its one endpoint, DNS, timeouts, keepalive, buffer and
connection limits, the transport: plain TCP or a PROXY v2 header, never TLS or HTTP/2), the admin cluster the
metrics listener routes to (only where it points), and the others (checked, then ignored).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..config import DNSFamily, Endpoint
from ..documents import show
from .address import DNS_ENDPOINT, STATIC_ENDPOINT, socket_address, socket_address_or_pipe
from .fields import (
    CLUSTER_FIELDS,
    CLUSTER_TYPES,
    DNS_FAMILIES,
    HTTP_PROTOCOL_OPTIONS,
    KEEPALIVE_FIELDS,
    NOT_SUPPORTED,
    PROXY_PROTOCOL_CONFIG_FIELDS,
    PROXY_PROTOCOL_TRANSPORT_FIELDS,
    RAW_BUFFER,
    TRANSPORT_SOCKET_FIELDS,
    UPSTREAM_OPTIONS_FIELDS,
    UPSTREAM_PROXY_PROTOCOL,
)
from .message import BootstrapError, Message, field_path

# Linux defaults, which Envoy leaves in place for a tcp_keepalive field it is not given.
KERNEL_KEEPALIVE = {"keepalive_time": 7200, "keepalive_interval": 75, "keepalive_probes": 9}
# Envoy's AUTO prefers IPv6 and V4_PREFERRED IPv4, falling back to the other; ALL uses both. apiproxy's
# resolver tries every address it is given, in the resolver's order.
DNS_FAMILY = {"V4_ONLY": DNSFamily.V4, "V6_ONLY": DNSFamily.V6}


@dataclass(frozen=True, slots=True)
class Gateway:
    """What the tcp_proxy's cluster says about reaching the seed gateway."""

    # Envoy names the cluster's stats by alt_stat_name when it is given.
    stats_name: str
    endpoint: Endpoint
    dns_family: DNSFamily
    dns_refresh: float
    # An upstream_proxy_protocol (v2) transport socket: the legacy mode, a PROXY header instead of CONNECT.
    proxy_protocol: bool
    connect_timeout: float
    buffer_limit: int | None
    keepalive_time: int
    keepalive_interval: int
    keepalive_probes: int
    # The DEFAULT-priority circuit breakers' max_connections.
    max_connections: tuple[int, ...]


def clusters_by_name(resources: Message) -> dict[str, Message]:
    clusters: dict[str, Message] = {}
    for cluster in resources.messages("clusters"):
        name = cluster.string("name")
        if not name:
            raise BootstrapError(cluster.at("name"), "required")
        if name in clusters:
            raise BootstrapError(cluster.at("name"), f"duplicate cluster name {show(name)}")
        clusters[name] = cluster
    return clusters


def read_gateway(cluster: Message) -> Gateway:
    cluster.check(CLUSTER_FIELDS)
    endpoint, family, refresh = _gateway_endpoint(cluster)
    proxy_protocol = _upstream_transport(cluster)
    _upstream_http_protocol(cluster)
    connect_timeout = cluster.duration("connect_timeout")
    if connect_timeout == 0:
        raise BootstrapError(cluster.at("connect_timeout"), "expected a duration greater than zero")
    keepalive = _keepalive(cluster)
    return Gateway(
        stats_name=cluster.string("alt_stat_name") or cluster.string("name"),
        endpoint=endpoint,
        dns_family=family,
        dns_refresh=refresh,
        proxy_protocol=proxy_protocol,
        connect_timeout=5.0 if connect_timeout is None else connect_timeout,
        buffer_limit=buffer_limit(cluster),
        keepalive_time=keepalive["keepalive_time"],
        keepalive_interval=keepalive["keepalive_interval"],
        keepalive_probes=keepalive["keepalive_probes"],
        max_connections=_circuit_breaker_limits(cluster),
    )


def buffer_limit(message: Message) -> int | None:
    """per_connection_buffer_limit_bytes of a listener or a cluster."""
    if not message.has("per_connection_buffer_limit_bytes"):
        return None
    return message.integer("per_connection_buffer_limit_bytes", 0, minimum=1024)


def cluster_target(cluster: Message) -> Endpoint | str | None:
    """The one endpoint of a cluster: a pipe path or an address; None if not exactly one."""
    endpoints = list(_lb_endpoints(cluster))
    if len(endpoints) != 1:
        return None
    return socket_address_or_pipe(endpoints[0].require("address"), DNS_ENDPOINT)


def ignore_cluster(cluster: Message) -> None:
    """A cluster the data path does not use: checked for fields Envoy refuses, otherwise ignored."""
    cluster.check(CLUSTER_FIELDS, refuse=False)
    cluster.findings.ignored.append(f"{cluster.path} (cluster {show(cluster.string('name'))})")


def _gateway_endpoint(cluster: Message) -> tuple[Endpoint, DNSFamily, float]:
    kind = cluster.enum("type", CLUSTER_TYPES)
    if kind not in ("STATIC", "STRICT_DNS", "LOGICAL_DNS"):
        raise BootstrapError(cluster.at("type"), f"{kind}: not supported (STATIC, STRICT_DNS or LOGICAL_DNS)")
    endpoints = list(_lb_endpoints(cluster))
    if len(endpoints) != 1:
        raise BootstrapError(
            cluster.at("load_assignment"),
            f"expected exactly one endpoint (the seed gateway), got {len(endpoints)}",
        )
    rules = STATIC_ENDPOINT if kind == "STATIC" else DNS_ENDPOINT
    endpoint = socket_address(endpoints[0].require("address"), rules)
    family = DNS_FAMILY.get(cluster.enum("dns_lookup_family", DNS_FAMILIES), DNSFamily.AUTO)
    refresh = cluster.duration("dns_refresh_rate")
    if refresh is not None and refresh < 0.001:
        raise BootstrapError(cluster.at("dns_refresh_rate"), "expected at least 1ms")
    return endpoint, family, 5.0 if refresh is None else refresh


def _lb_endpoints(cluster: Message) -> Iterator[Message]:
    assignment = cluster.message("load_assignment")
    if assignment is None:
        return
    for locality in assignment.messages("endpoints"):
        for lb_endpoint in locality.messages("lb_endpoints"):
            if lb_endpoint.has("endpoint_name"):
                raise BootstrapError(lb_endpoint.at("endpoint_name"), NOT_SUPPORTED)
            yield lb_endpoint.require("endpoint")


def _upstream_transport(cluster: Message) -> bool:
    """True for an upstream_proxy_protocol (v2) transport socket over plain TCP; refuses TLS and others."""
    socket_ = cluster.message("transport_socket")
    if socket_ is None:
        return False
    return _transport_socket(socket_, outer=True)


def _transport_socket(socket_: Message, *, outer: bool) -> bool:
    socket_.check(TRANSPORT_SOCKET_FIELDS)
    typed = socket_.message("typed_config")
    kind = typed.type_name() if typed is not None else socket_.string("name")
    if kind in (RAW_BUFFER, "envoy.transport_sockets.raw_buffer"):
        return False
    if kind == UPSTREAM_PROXY_PROTOCOL and outer and typed is not None:
        typed.check(PROXY_PROTOCOL_TRANSPORT_FIELDS)
        config = typed.message("config")
        if config is None:
            raise BootstrapError(
                typed.at("config"), "V1 (the default): not supported (PROXY protocol v2 only)"
            )
        config.check(PROXY_PROTOCOL_CONFIG_FIELDS)
        if config.enum("version", ("V1", "V2")) != "V2":
            raise BootstrapError(config.at("version"), "V1: not supported (PROXY protocol v2 only)")
        inner = typed.message("transport_socket")
        if inner is not None and _transport_socket(inner, outer=False):
            raise BootstrapError(inner.path, NOT_SUPPORTED)
        return True
    what = "TLS to the gateway" if "tls" in kind.lower() else show(kind)
    raise BootstrapError(socket_.path, f"not supported ({what})")


def _upstream_http_protocol(cluster: Message) -> None:
    """HTTP/2 to the gateway (explicit, or chosen by ALPN/downstream) would change the tunnel protocol."""
    options = cluster.fields.get("typed_extension_protocol_options")
    if not options:
        return
    if not isinstance(options, Mapping):
        raise BootstrapError(cluster.at("typed_extension_protocol_options"), "expected an object")
    for name, value in options.items():
        where = field_path(cluster.at("typed_extension_protocol_options"), str(name))
        typed = Message(cluster.findings, value, where)
        if typed.type_name() != HTTP_PROTOCOL_OPTIONS:
            raise BootstrapError(where, NOT_SUPPORTED)
        explicit = typed.message("explicit_http_config")
        if (
            typed.has("auto_config")
            or typed.has("use_downstream_protocol_config")
            or (explicit is not None and not explicit.has("http_protocol_options"))
        ):
            raise BootstrapError(
                where, "not supported (HTTP/2 or HTTP/3 tunnelling; apiproxy speaks HTTP/1.1 CONNECT)"
            )
        cluster.findings.ignored.append(where)


def _keepalive(cluster: Message) -> dict[str, int]:
    # Envoy sets no keepalive without tcp_keepalive; apiproxy always does (with the kernel's values).
    values = dict(KERNEL_KEEPALIVE)
    options = cluster.message("upstream_connection_options")
    if options is None:
        return values
    options.check(UPSTREAM_OPTIONS_FIELDS)
    keepalive = options.message("tcp_keepalive")
    if keepalive is None:
        return values
    keepalive.check(KEEPALIVE_FIELDS)
    for name in ("keepalive_time", "keepalive_interval"):
        if keepalive.has(name):
            values[name] = keepalive.integer(name, 0, minimum=1, maximum=32767)
    if keepalive.has("keepalive_probes"):
        values["keepalive_probes"] = keepalive.integer("keepalive_probes", 0, minimum=1, maximum=127)
    return values


def _circuit_breaker_limits(cluster: Message) -> tuple[int, ...]:
    breakers = cluster.message("circuit_breakers")
    if breakers is None:
        return ()
    return tuple(
        threshold.integer("max_connections", 0, minimum=1)
        for threshold in breakers.messages("thresholds")
        if threshold.enum("priority", ("DEFAULT", "HIGH")) == "DEFAULT" and threshold.has("max_connections")
    )
