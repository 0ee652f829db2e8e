"""Reads an Envoy v3 bootstrap (YAML or JSON text, as Gardener renders `envoy.yaml`) into a `ProxyConfig`.

Sans-I/O. Every field of the messages the data path depends on (Bootstrap, Listener, FilterChain, TcpProxy,
TunnelingConfig, Cluster, addresses) is classified in `fields`: *used* (mapped onto apiproxy's
configuration), *ignored* (no effect on the bytes: stats, metadata, load-balancing knobs of a one-endpoint
cluster) or *refused* with a `BootstrapError` naming the config path (`static_resources.clusters[0].
transport_socket: not supported (TLS to the gateway)`). A field Envoy does not know either is refused as
Envoy refuses it, unless `allow_unknown_fields` (Envoy's `--allow-unknown-static-fields`).

This module reads the top level and puts the pieces together; each piece is read by the module named after
it: `listener` (and `metrics`, with the admin), `tcp_proxy` (with `cluster` and `access_log`),
`layered_runtime`, and `address` for every Address in them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ListenerConfig, MonitoringConfig, ProxyConfig, TunnelConfig, UpstreamProtocol
from ..documents import DocumentError, load_mapping
from .cluster import buffer_limit, clusters_by_name, ignore_cluster
from .fields import BOOTSTRAP_FIELDS, STATIC_RESOURCES_FIELDS
from .layered_runtime import connection_limit_keys, read_runtime, runtime_integer
from .listener import TunnelListener, read_listeners
from .message import BootstrapError, Findings, Message
from .metrics import read_admin
from .tcp_proxy import TcpProxy, read_tcp_proxy

__all__ = ["Bootstrap", "BootstrapError", "bootstrap_from_document", "read_bootstrap"]

# Envoy's per_connection_buffer_limit_bytes when neither the listener nor the cluster sets one.
ENVOY_BUFFER_LIMIT = 1024 * 1024
# No connection limit in the config: Envoy has none (it only warns); apiproxy's flag allows this many.
UNLIMITED_CONNECTIONS = 1_000_000


@dataclass(frozen=True, slots=True)
class Bootstrap:
    config: ProxyConfig
    # Config paths present in the file that have no effect in apiproxy (logged at start).
    ignored: tuple[str, ...]
    # What the admin interface was given ("pipe /path", "socket 127.0.0.1:9901"); apiproxy serves only the
    # admin paths the metrics listener routes to, on the metrics listener.
    admin: str | None
    # apiproxy option names (as runtime errors name them) -> the config path they come from.
    option_paths: Mapping[str, str]


def read_bootstrap(text: str, *, allow_unknown_fields: bool = False) -> Bootstrap:
    """YAML or JSON text (bounded: `documents`) to the configuration it describes."""
    try:
        document = load_mapping(text, "an Envoy v3 Bootstrap object")
    except DocumentError as error:
        raise BootstrapError("", str(error)) from None
    return bootstrap_from_document(document, allow_unknown_fields=allow_unknown_fields)


def bootstrap_from_document(document: Mapping[str, Any], *, allow_unknown_fields: bool = False) -> Bootstrap:
    root = Message(Findings(allow_unknown_fields), document, "")
    root.check(BOOTSTRAP_FIELDS)
    runtime = read_runtime(root.message("layered_runtime"))
    admin, admin_text = read_admin(root.message("admin"))
    resources = root.message("static_resources") or Message(root.findings, {}, "static_resources")
    resources.check(STATIC_RESOURCES_FIELDS)
    clusters = clusters_by_name(resources)
    listeners = read_listeners(resources, clusters, admin)
    tunnel = listeners.tunnel
    tcp_proxy = read_tcp_proxy(tunnel.tcp_proxy, clusters)
    for name, cluster in clusters.items():
        if name != tcp_proxy.cluster:
            ignore_cluster(cluster)

    limit_keys = connection_limit_keys(tunnel.name, tunnel.message.boolean("ignore_global_conn_limit"))
    root.findings.ignored.extend(f"layered_runtime {key}" for key in runtime if key not in limit_keys)
    limits = [runtime_integer(key, runtime[key]) for key in limit_keys if key in runtime]
    monitoring = None
    if listeners.metrics or tcp_proxy.access_log_format is not None:
        monitoring = MonitoringConfig(
            addresses=tuple(dict.fromkeys(listeners.metrics)),
            access_log_format=tcp_proxy.access_log_format,
            envoy_cluster_name=tcp_proxy.gateway.stats_name,
            envoy_stat_prefix=tcp_proxy.stat_prefix,
        )
    config = ProxyConfig(
        listener=_listener_config(tunnel, limits + list(tcp_proxy.gateway.max_connections)),
        tunnel=_tunnel_config(tcp_proxy, buffer_limit(tunnel.message)),
        vip=None,
        monitoring=monitoring,
    )
    option_paths = {"--listen": tunnel.message.at("address")}
    if listeners.metrics_paths:
        option_paths["--metrics-address"] = " / ".join(listeners.metrics_paths)
    return Bootstrap(config, tuple(root.findings.ignored), admin_text, option_paths)


def _listener_config(tunnel: TunnelListener, limits: list[int]) -> ListenerConfig:
    """The smallest of Envoy's connection limits that apply: the listener's, the global one, the cluster's
    circuit breakers. Without circuit_breakers Envoy caps a cluster at 1,024 connections; apiproxy does not
    copy that accident (Gardener sets none), the listener limits decide."""
    return ListenerConfig(
        listen=tunnel.listen,
        max_connections=min(min(limits, default=UNLIMITED_CONNECTIONS), UNLIMITED_CONNECTIONS),
        freebind=tunnel.message.boolean("freebind"),
        backlog=tunnel.message.integer("tcp_backlog_size", 4096, minimum=1, maximum=65535),
    )


def _tunnel_config(tcp_proxy: TcpProxy, listener_buffer: int | None) -> TunnelConfig:
    gateway = tcp_proxy.gateway
    buffers = [limit for limit in (listener_buffer, gateway.buffer_limit) if limit is not None]
    return TunnelConfig(
        upstream=gateway.endpoint,
        connect_authority=tcp_proxy.connect_authority,
        connect_headers=tcp_proxy.connect_headers,
        upstream_protocol=UpstreamProtocol.PROXY_PROTOCOL_V2
        if gateway.proxy_protocol
        else UpstreamProtocol.CONNECT,
        dns_family=gateway.dns_family,
        dns_refresh=gateway.dns_refresh,
        connect_timeout=gateway.connect_timeout,
        idle_timeout=tcp_proxy.idle_timeout,
        tcp_keepalive_time=float(gateway.keepalive_time),
        tcp_keepalive_interval=float(gateway.keepalive_interval),
        tcp_keepalive_probes=gateway.keepalive_probes,
        buffer_size=min(buffers, default=ENVOY_BUFFER_LIMIT),
    )
