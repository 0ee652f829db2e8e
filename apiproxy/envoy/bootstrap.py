"""Reads an Envoy v3 bootstrap (YAML or JSON text, as Gardener renders `envoy.yaml`) into a `ProxyConfig`.

Sans-I/O. Every field of the messages the data path depends on (Bootstrap, Listener, FilterChain, TcpProxy,
TunnelingConfig, Cluster, addresses) is classified in `fields`: *used* (mapped here onto apiproxy's
configuration), *ignored* (no effect on the bytes: stats, metadata, load-balancing knobs of a one-endpoint
cluster) or *refused* with a `BootstrapError` naming the config path (`static_resources.clusters[0].
transport_socket: not supported (TLS to the gateway)`). A field Envoy does not know either is refused as
Envoy refuses it, unless `allow_unknown_fields` (Envoy's `--allow-unknown-static-fields`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import (
    ConfigError,
    DNSFamily,
    Endpoint,
    ListenerConfig,
    MonitoringConfig,
    ProxyConfig,
    TunnelConfig,
    UpstreamProtocol,
    is_hostname,
    parse_authority,
    parse_header_name,
    parse_header_value,
)
from .fields import (
    ACCESS_LOG_FIELDS,
    ADDRESS_FIELDS,
    ADMIN_FIELDS,
    ADMIN_ROUTES,
    BOOTSTRAP_FIELDS,
    CLUSTER_FIELDS,
    CLUSTER_TYPES,
    DNS_FAMILIES,
    FILE_ACCESS_LOG,
    FILTER_CHAIN_FIELDS,
    FILTER_FIELDS,
    HEADER_FIELDS,
    HEADER_OPTION_FIELDS,
    HTTP_CONNECTION_MANAGER,
    HTTP_PROTOCOL_OPTIONS,
    IGNORE,
    KEEPALIVE_FIELDS,
    LAYER_FIELDS,
    LISTENER_FIELDS,
    LOG_FORMAT_FIELDS,
    NOT_SUPPORTED,
    RAW_BUFFER,
    ROUTER,
    SOCKET_ADDRESS_FIELDS,
    STATIC_RESOURCES_FIELDS,
    STDOUT_ACCESS_LOG,
    TCP_PROXY,
    TCP_PROXY_FIELDS,
    TUNNELING_FIELDS,
    UPSTREAM_OPTIONS_FIELDS,
    UPSTREAM_PROXY_PROTOCOL,
    USE,
)
from .message import BootstrapError, Findings, Message, show

__all__ = ["Bootstrap", "BootstrapError", "bootstrap_from_document", "parse_document", "read_bootstrap"]

# Envoy's own defaults where they differ from apiproxy's.
ENVOY_BUFFER_LIMIT = 1024 * 1024  # per_connection_buffer_limit_bytes
ENVOY_IDLE_TIMEOUT = 3600.0  # tcp_proxy idle_timeout
# idle_timeout: 0s disables the timeout in Envoy; a year stands for "never" on a timer.
NO_IDLE_TIMEOUT = 365 * 24 * 3600.0
# Linux defaults, which Envoy leaves in place for a tcp_keepalive field it is not given.
KERNEL_KEEPALIVE = {"keepalive_time": 7200, "keepalive_interval": 75, "keepalive_probes": 9}
# No connection limit in the config: Envoy has none (it only warns); apiproxy's flag allows this many.
UNLIMITED_CONNECTIONS = 1_000_000
# Envoy's access log format when a logger has no log_format (HTTP-oriented; the formatter decides).
ENVOY_DEFAULT_ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    "%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

# Envoy's AUTO prefers IPv6 and V4_PREFERRED IPv4, falling back to the other; ALL uses both. apiproxy's
# resolver tries every address it is given, in the resolver's order.
DNS_FAMILY = {"V4_ONLY": DNSFamily.V4, "V6_ONLY": DNSFamily.V6}


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


def parse_document(text: str) -> dict[str, Any]:
    """YAML or JSON (JSON is YAML) → the document. PyYAML is imported here, not by `apiproxy run`."""
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BootstrapError("", f"not valid YAML or JSON: {first_line}") from None
    if not isinstance(document, dict):
        raise BootstrapError("", f"expected an Envoy v3 Bootstrap object, got {type(document).__name__}")
    return document


def read_bootstrap(text: str, *, allow_unknown_fields: bool = False) -> Bootstrap:
    return bootstrap_from_document(parse_document(text), allow_unknown_fields=allow_unknown_fields)


def bootstrap_from_document(document: Mapping[str, Any], *, allow_unknown_fields: bool = False) -> Bootstrap:
    return _Reader(allow_unknown_fields).bootstrap(document)


# --- the reader ------------------------------------------------------------------------------------------


@dataclass
class _TunnelListener:
    message: Message
    name: str
    listen: Endpoint
    tcp_proxy: Message


class _Reader:
    def __init__(self, allow_unknown_fields: bool) -> None:
        self.findings = Findings(allow_unknown_fields)

    def bootstrap(self, document: Mapping[str, Any]) -> Bootstrap:
        root = Message(self.findings, document, "")
        root.check(BOOTSTRAP_FIELDS)
        runtime = self.runtime(root.message("layered_runtime"))
        admin_address, admin_text = self.admin(root.message("admin"))
        resources = root.message("static_resources") or Message(self.findings, {}, "static_resources")
        resources.check(STATIC_RESOURCES_FIELDS)
        clusters = {}
        for cluster in resources.messages("clusters"):
            name = cluster.string("name")
            if not name:
                raise BootstrapError(cluster.at("name"), "required")
            if name in clusters:
                raise BootstrapError(cluster.at("name"), f"duplicate cluster name {name!r}")
            clusters[name] = cluster

        tunnels: list[_TunnelListener] = []
        monitoring_addresses: list[Endpoint] = []
        metrics_paths: list[str] = []
        names: set[str] = set()
        for listener in resources.messages("listeners"):
            listener.check(LISTENER_FIELDS)
            name = listener.string("name")
            if name and name in names:
                raise BootstrapError(listener.at("name"), f"duplicate listener name {name!r}")
            names.add(name)
            self.listener_switches(listener)
            chain = self.single_filter_chain(listener)
            filters = list(chain.messages("filters"))
            if len(filters) != 1:
                raise BootstrapError(
                    chain.at("filters"),
                    "expected exactly one network filter (tcp_proxy, or the metrics listener's http_connection_manager)",
                )
            filter_ = filters[0]
            filter_.check(FILTER_FIELDS)
            typed = filter_.require("typed_config")
            kind = typed.type_name()
            if kind == TCP_PROXY:
                if listener.has("additional_addresses"):
                    raise BootstrapError(
                        listener.at("additional_addresses"),
                        "not supported on the tcp_proxy listener (one address)",
                    )
                tunnels.append(_TunnelListener(listener, name, self.listener_address(listener), typed))
            elif kind == HTTP_CONNECTION_MANAGER:
                self.metrics_routes(typed, clusters, admin_address)
                monitoring_addresses.append(self.listener_address(listener))
                metrics_paths.append(listener.at("address"))
                for index, extra in enumerate(listener.messages("additional_addresses")):
                    extra.check({"address": USE, "socket_options": NOT_SUPPORTED})
                    monitoring_addresses.append(
                        self.socket_address(extra.require("address"), f"additional_addresses[{index}]")
                    )
            else:
                raise BootstrapError(
                    typed.at("@type"),
                    f"network filter {kind or filter_.string('name')!r}: not supported (only tcp_proxy, and http_connection_manager routing /metrics and /ready to the admin)",
                )

        if not tunnels:
            raise BootstrapError(
                "static_resources.listeners",
                "no listener with a tcp_proxy filter: nothing for apiproxy to serve",
            )
        if len(tunnels) > 1:
            raise BootstrapError(
                tunnels[1].message.path, "a second tcp_proxy listener: not supported (apiproxy serves one)"
            )
        tunnel_listener = tunnels[0]
        config, tunnel_cluster = self.proxy_config(tunnel_listener, clusters, runtime, monitoring_addresses)
        for name, cluster in clusters.items():
            if name != tunnel_cluster:
                self.other_cluster(cluster)
        used = self.used_runtime_keys(tunnel_listener)
        self.findings.ignored.extend(f"layered_runtime {key}" for key in runtime if key not in used)
        option_paths = {"--listen": tunnel_listener.message.at("address")}
        if metrics_paths:
            option_paths["--metrics-address"] = " / ".join(metrics_paths)
        return Bootstrap(config, tuple(self.findings.ignored), admin_text, option_paths)

    # -- runtime, admin -------------------------------------------------------------------------------

    def runtime(self, layered: Message | None) -> dict[str, object]:
        values: dict[str, object] = {}
        if layered is None:
            return values
        layered.check({"layers": USE})
        for layer in layered.messages("layers"):
            layer.check(LAYER_FIELDS)
            static = layer.fields.get("static_layer")
            if static is not None:
                if not isinstance(static, Mapping):
                    raise BootstrapError(layer.at("static_layer"), f"expected an object, got {show(static)}")
                values.update(_flatten(static))  # later layers override earlier ones
        return values

    def admin(self, admin: Message | None) -> tuple[Endpoint | str | None, str | None]:
        if admin is None:
            return None, None
        admin.check(ADMIN_FIELDS)
        address = admin.message("address")
        if address is None:
            return None, None
        address.check(ADDRESS_FIELDS)
        pipe = address.message("pipe")
        if pipe is not None:
            pipe.check({"path": USE, "mode": IGNORE})
            path = pipe.string("path")
            if not path:
                raise BootstrapError(pipe.at("path"), "required")
            return path, f"pipe {path}"
        endpoint = self.socket_address(address, "address", allow_port_zero=True)
        return endpoint, f"socket {endpoint}"

    # -- listeners ------------------------------------------------------------------------------------

    def listener_switches(self, listener: Message) -> None:
        """Boolean listener fields whose default is harmless and whose other value apiproxy cannot honour."""
        for name, harmless in (("use_original_dst", False), ("transparent", False), ("bind_to_port", True)):
            if listener.has(name) and listener.boolean(name) != harmless:
                raise BootstrapError(listener.at(name), f"{str(not harmless).lower()}: not supported")

    def single_filter_chain(self, listener: Message) -> Message:
        chains = list(listener.messages("filter_chains"))
        if len(chains) != 1:
            raise BootstrapError(
                listener.at("filter_chains"), f"expected exactly one filter chain, got {len(chains)}"
            )
        chain = chains[0]
        chain.check(FILTER_CHAIN_FIELDS)
        match = chain.fields.get("filter_chain_match")
        if match:  # an empty match is no match criterion at all
            raise BootstrapError(
                chain.at("filter_chain_match"), "not supported (one filter chain for every connection)"
            )
        return chain

    def listener_address(self, listener: Message) -> Endpoint:
        return self.socket_address(listener.require("address"), "address")

    def socket_address(self, address: Message, what: str, *, allow_port_zero: bool = False) -> Endpoint:
        """An Address that must be a TCP socket address with an IP literal (Envoy listens on IPs only)."""
        address.check(ADDRESS_FIELDS)
        socket_address = address.message("socket_address")
        if socket_address is None:
            if address.has("pipe"):
                raise BootstrapError(address.at("pipe"), "not supported (TCP addresses only)")
            raise BootstrapError(address.at("socket_address"), "required")
        socket_address.check(SOCKET_ADDRESS_FIELDS)
        if socket_address.enum("protocol", ("TCP", "UDP")) != "TCP":
            raise BootstrapError(socket_address.at("protocol"), "UDP: not supported")
        if socket_address.boolean("ipv4_compat"):
            raise BootstrapError(
                socket_address.at("ipv4_compat"), "true: not supported (IPv6 sockets are IPv6-only)"
            )
        host = socket_address.string("address")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise BootstrapError(
                socket_address.at("address"), f"expected an IP address, got {show(host)}"
            ) from None
        port = socket_address.integer("port_value", 0, maximum=65535)
        if port == 0 and not allow_port_zero:
            raise BootstrapError(
                socket_address.at("port_value"),
                "0 (a port the kernel picks): not supported, expected 1-65535",
            )
        return Endpoint(str(ip), port)

    # -- the metrics listener ---------------------------------------------------------------------------

    def metrics_routes(
        self, manager: Message, clusters: Mapping[str, Message], admin: Endpoint | str | None
    ) -> None:
        """The http_connection_manager may only expose the admin's /stats/prometheus and /ready."""
        if manager.has("rds"):
            raise BootstrapError(manager.at("rds"), "not supported (xDS)")
        for http_filter in manager.messages("http_filters"):
            typed = http_filter.message("typed_config")
            kind = typed.type_name() if typed is not None else http_filter.string("name")
            if kind not in (ROUTER, "envoy.filters.http.router"):
                raise BootstrapError(http_filter.path, f"http filter {kind!r}: not supported (router only)")
        for name in manager.fields:
            if name not in ("@type", "route_config", "http_filters"):
                self.findings.ignored.append(manager.at(name))
        route_config = manager.require("route_config")
        for host in route_config.messages("virtual_hosts"):
            for route in host.messages("routes"):
                self.metrics_route(route, clusters, admin)

    def metrics_route(
        self, route: Message, clusters: Mapping[str, Message], admin: Endpoint | str | None
    ) -> None:
        match = route.require("match")
        action = route.message("route")
        if set(match.fields) - {"path", "case_sensitive"} or action is None:
            raise BootstrapError(
                route.path, "not supported (only `match: {path: ...}` routes to the admin cluster)"
            )
        public = match.string("path")
        action.check(
            {"cluster": USE, "prefix_rewrite": USE, "timeout": IGNORE, "idle_timeout": IGNORE}, refuse=False
        )
        admin_path = action.string("prefix_rewrite") or public
        expected = ADMIN_ROUTES.get(admin_path)
        if expected is None or expected != public:
            raise BootstrapError(
                route.path,
                f"{public} → admin {admin_path}: not supported (apiproxy serves /metrics from /stats/prometheus and /ready)",
            )
        cluster_name = action.string("cluster")
        cluster = clusters.get(cluster_name)
        if cluster is None:
            raise BootstrapError(action.at("cluster"), f"no cluster named {cluster_name!r}")
        if admin is None or self.cluster_target(cluster) != admin:
            raise BootstrapError(
                action.at("cluster"),
                f"cluster {cluster_name!r} does not point at the admin address: not supported",
            )

    def cluster_target(self, cluster: Message) -> Endpoint | str | None:
        """The one endpoint of a cluster: a pipe path or an address; None if not exactly one."""
        endpoints = list(self.lb_endpoints(cluster))
        if len(endpoints) != 1:
            return None
        address = endpoints[0].message("address")
        if address is None:
            return None
        pipe = address.message("pipe")
        if pipe is not None:
            return pipe.string("path")
        socket_address = address.message("socket_address")
        if socket_address is None:
            return None
        return Endpoint(
            socket_address.string("address"), socket_address.integer("port_value", 0, maximum=65535)
        )

    def lb_endpoints(self, cluster: Message) -> Iterator[Message]:
        assignment = cluster.message("load_assignment")
        if assignment is None:
            return
        for locality in assignment.messages("endpoints"):
            for lb_endpoint in locality.messages("lb_endpoints"):
                if lb_endpoint.has("endpoint_name"):
                    raise BootstrapError(lb_endpoint.at("endpoint_name"), NOT_SUPPORTED)
                yield lb_endpoint.require("endpoint")

    # -- the tunnel -------------------------------------------------------------------------------------

    def proxy_config(
        self,
        tunnel_listener: _TunnelListener,
        clusters: Mapping[str, Message],
        runtime: Mapping[str, object],
        monitoring_addresses: list[Endpoint],
    ) -> tuple[ProxyConfig, str]:
        listener, tcp_proxy = tunnel_listener.message, tunnel_listener.tcp_proxy
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
                f"no cluster named {cluster_name!r} in static_resources.clusters: not supported (Envoy would close every connection)",
            )
        cluster.check(CLUSTER_FIELDS)
        upstream, dns_family, dns_refresh = self.cluster_endpoint(cluster)
        proxy_protocol = self.upstream_transport(cluster)
        self.upstream_http_protocol(cluster)

        authority = ""
        headers: tuple[tuple[str, str], ...] = ()
        tunneling = tcp_proxy.message("tunneling_config")
        if tunneling is not None:
            if proxy_protocol:
                raise BootstrapError(
                    cluster.at("transport_socket"),
                    "a PROXY protocol header before a CONNECT: not supported (CONNECT mode never sends PROXY)",
                )
            authority, headers = self.tunneling(tunneling)
        elif not proxy_protocol:
            raise BootstrapError(
                tcp_proxy.at("tunneling_config"),
                "required: apiproxy carries connections over HTTP CONNECT (or, with an upstream_proxy_protocol transport socket, PROXY v2), not plain TCP",
            )

        idle = tcp_proxy.duration("idle_timeout")
        idle_timeout = ENVOY_IDLE_TIMEOUT if idle is None else (idle or NO_IDLE_TIMEOUT)
        connect_timeout = cluster.duration("connect_timeout")
        if connect_timeout == 0:
            raise BootstrapError(cluster.at("connect_timeout"), "expected a duration greater than zero")
        buffers = [
            m.integer("per_connection_buffer_limit_bytes", 0, minimum=1024)
            for m in (listener, cluster)
            if m.has("per_connection_buffer_limit_bytes")
        ]
        keepalive = self.keepalive(cluster)
        tunnel = TunnelConfig(
            upstream=upstream,
            connect_authority=authority,
            connect_headers=headers,
            upstream_protocol=UpstreamProtocol.PROXY_PROTOCOL_V2
            if proxy_protocol
            else UpstreamProtocol.CONNECT,
            dns_family=dns_family,
            dns_refresh=dns_refresh,
            connect_timeout=5.0 if connect_timeout is None else connect_timeout,
            idle_timeout=idle_timeout,
            tcp_keepalive_time=float(keepalive["keepalive_time"]),
            tcp_keepalive_interval=float(keepalive["keepalive_interval"]),
            tcp_keepalive_probes=keepalive["keepalive_probes"],
            buffer_size=min(buffers) if buffers else ENVOY_BUFFER_LIMIT,
        )
        listener_config = ListenerConfig(
            listen=tunnel_listener.listen,
            max_connections=self.connection_limit(tunnel_listener, cluster, runtime),
            freebind=listener.boolean("freebind"),
            backlog=listener.integer("tcp_backlog_size", 4096, minimum=1, maximum=65535),
        )
        access_log = self.access_log(tcp_proxy)
        monitoring = None
        if monitoring_addresses or access_log is not None:
            monitoring = MonitoringConfig(
                addresses=tuple(dict.fromkeys(monitoring_addresses)),
                access_log_format=access_log,
                # Envoy names the cluster's stats by alt_stat_name when it is given.
                envoy_cluster_name=cluster.string("alt_stat_name") or cluster_name,
                envoy_stat_prefix=stat_prefix,
            )
        proxy = ProxyConfig(listener=listener_config, tunnel=tunnel, vip=None, monitoring=monitoring)
        return proxy, cluster_name

    def cluster_endpoint(self, cluster: Message) -> tuple[Endpoint, DNSFamily, float]:
        kind = cluster.enum("type", CLUSTER_TYPES)
        if kind not in ("STATIC", "STRICT_DNS", "LOGICAL_DNS"):
            raise BootstrapError(
                cluster.at("type"), f"{kind}: not supported (STATIC, STRICT_DNS or LOGICAL_DNS)"
            )
        endpoints = list(self.lb_endpoints(cluster))
        if len(endpoints) != 1:
            raise BootstrapError(
                cluster.at("load_assignment"),
                f"expected exactly one endpoint (the seed gateway), got {len(endpoints)}",
            )
        endpoint = endpoints[0]
        address = endpoint.require("address")
        address.check(ADDRESS_FIELDS)
        if address.has("pipe"):
            raise BootstrapError(address.at("pipe"), "not supported (the gateway is reached over TCP)")
        socket_address = address.require("socket_address")
        socket_address.check(SOCKET_ADDRESS_FIELDS)
        if socket_address.enum("protocol", ("TCP", "UDP")) != "TCP":
            raise BootstrapError(socket_address.at("protocol"), "UDP: not supported")
        host = socket_address.string("address")
        port = socket_address.integer("port_value", 0, minimum=1, maximum=65535)
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            if kind == "STATIC":
                raise BootstrapError(
                    socket_address.at("address"), f"a STATIC cluster needs an IP address, got {show(host)}"
                ) from None
            if not is_hostname(host):
                raise BootstrapError(
                    socket_address.at("address"), f"expected a DNS name or an IP address, got {show(host)}"
                ) from None
        family = DNS_FAMILY.get(cluster.enum("dns_lookup_family", DNS_FAMILIES), DNSFamily.AUTO)
        refresh = cluster.duration("dns_refresh_rate")
        if refresh is not None and refresh < 0.001:
            raise BootstrapError(cluster.at("dns_refresh_rate"), "expected at least 1ms")
        return Endpoint(host, port), family, 5.0 if refresh is None else refresh

    def upstream_transport(self, cluster: Message) -> bool:
        """True for an upstream_proxy_protocol (v2) transport socket over plain TCP; refuses TLS and others."""
        socket_ = cluster.message("transport_socket")
        if socket_ is None:
            return False
        return self.transport_socket(socket_, outer=True)

    def transport_socket(self, socket_: Message, *, outer: bool) -> bool:
        socket_.check({"name": USE, "typed_config": USE})
        typed = socket_.message("typed_config")
        kind = typed.type_name() if typed is not None else socket_.string("name")
        if kind in (RAW_BUFFER, "envoy.transport_sockets.raw_buffer"):
            return False
        if kind == UPSTREAM_PROXY_PROTOCOL and outer and typed is not None:
            typed.check(
                {
                    "@type": USE,
                    "config": USE,
                    "transport_socket": USE,
                    "allow_unspecified_address": IGNORE,
                    "tlv_as_pool_key": IGNORE,
                }
            )
            config = typed.message("config")
            if config is not None:
                config.check(
                    {"version": USE, "pass_through_tlvs": NOT_SUPPORTED, "added_tlvs": NOT_SUPPORTED}
                )
                if config.enum("version", ("V1", "V2")) != "V2":
                    raise BootstrapError(config.at("version"), "V1: not supported (PROXY protocol v2 only)")
            else:
                raise BootstrapError(
                    typed.at("config"), "V1 (the default): not supported (PROXY protocol v2 only)"
                )
            inner = typed.message("transport_socket")
            if inner is not None and self.transport_socket(inner, outer=False):
                raise BootstrapError(inner.path, NOT_SUPPORTED)
            return True
        what = "TLS to the gateway" if "tls" in kind.lower() else kind
        raise BootstrapError(socket_.path, f"not supported ({what})")

    def upstream_http_protocol(self, cluster: Message) -> None:
        """HTTP/2 to the gateway (explicit, or chosen by ALPN/downstream) would change the tunnel protocol."""
        options = cluster.fields.get("typed_extension_protocol_options")
        if not options:
            return
        if not isinstance(options, Mapping):
            raise BootstrapError(cluster.at("typed_extension_protocol_options"), "expected an object")
        for name, value in options.items():
            where = f"{cluster.at('typed_extension_protocol_options')}.{name}"
            typed = Message(self.findings, value, where)
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
            self.findings.ignored.append(where)

    def keepalive(self, cluster: Message) -> dict[str, int]:
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

    def tunneling(self, tunneling: Message) -> tuple[str, tuple[tuple[str, str], ...]]:
        tunneling.check(TUNNELING_FIELDS)
        if tunneling.boolean("use_post"):
            raise BootstrapError(tunneling.at("use_post"), "true: not supported (CONNECT only)")
        hostname = tunneling.string("hostname")
        if not hostname:
            raise BootstrapError(tunneling.at("hostname"), "required")
        if "%" in hostname:
            raise BootstrapError(
                tunneling.at("hostname"),
                "command operators (%...%): not supported, expected a fixed HOST:PORT",
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
                parse_header_value(header.at("value"), value)
            except ConfigError as error:
                raise BootstrapError(error.option, error.expected + f", got {show(error.value)}") from None
            if name.lower() == "host":
                raise BootstrapError(header.at("key"), "host cannot be overridden (Envoy refuses it too)")
            if "%" in value:
                raise BootstrapError(
                    header.at("value"), "command operators (%...%): not supported, expected a fixed value"
                )
            headers.append((name, value))
        if len({name.lower() for name, _ in headers}) != len(headers):
            raise BootstrapError(tunneling.at("headers_to_add"), "the same header twice: not supported")
        return authority, tuple(headers)

    @staticmethod
    def used_runtime_keys(tunnel_listener: _TunnelListener) -> list[str]:
        keys = [f"envoy.resource_limits.listener.{tunnel_listener.name}.connection_limit"]
        if not tunnel_listener.message.boolean("ignore_global_conn_limit"):
            keys.append("overload.global_downstream_max_connections")
        return keys

    def connection_limit(
        self, tunnel_listener: _TunnelListener, cluster: Message, runtime: Mapping[str, object]
    ) -> int:
        """The smallest of Envoy's limits that apply: the listener's, the global one, the cluster's."""
        limits: list[int] = []
        for key in self.used_runtime_keys(tunnel_listener):
            if key in runtime:
                limits.append(_runtime_integer(key, runtime[key]))
        breakers = cluster.message("circuit_breakers")
        if breakers is not None:
            for threshold in breakers.messages("thresholds"):
                if threshold.enum("priority", ("DEFAULT", "HIGH")) == "DEFAULT" and threshold.has(
                    "max_connections"
                ):
                    limits.append(threshold.integer("max_connections", 0, minimum=1))
        # Without circuit_breakers Envoy caps a cluster at 1,024 connections; apiproxy does not copy that
        # accident (Gardener sets none), the listener limits above decide.
        return min(min(limits, default=UNLIMITED_CONNECTIONS), UNLIMITED_CONNECTIONS)

    def access_log(self, tcp_proxy: Message) -> str | None:
        loggers = list(tcp_proxy.messages("access_log"))
        if not loggers:
            return None
        if len(loggers) > 1:
            raise BootstrapError(loggers[1].path, "a second access log: not supported")
        logger = loggers[0]
        logger.check(ACCESS_LOG_FIELDS)
        typed = logger.require("typed_config")
        kind = typed.type_name()
        if kind == STDOUT_ACCESS_LOG:
            typed.check({"@type": USE, "log_format": USE})
        elif kind == FILE_ACCESS_LOG:
            typed.check(
                {
                    "@type": USE,
                    "path": USE,
                    "log_format": USE,
                    "format": USE,
                    "json_format": "not supported (text formats only)",
                    "typed_json_format": "not supported (text formats only)",
                }
            )
            if typed.string("path") != "/dev/stdout":
                raise BootstrapError(
                    typed.at("path"), f"{typed.string('path')!r}: not supported (stdout only)"
                )
            if typed.has("format"):
                return self.check_format(typed.at("format"), typed.string("format"))
        else:
            raise BootstrapError(typed.at("@type"), f"access logger {kind!r}: not supported (stdout only)")
        log_format = typed.message("log_format")
        if log_format is None:
            return self.check_format(typed.path, ENVOY_DEFAULT_ACCESS_LOG_FORMAT)
        log_format.check(LOG_FORMAT_FIELDS)
        source = log_format.message("text_format_source")
        if source is not None:
            source.check(
                {
                    "inline_string": USE,
                    "filename": "not supported (inline_string only)",
                    "inline_bytes": "not supported (inline_string only)",
                    "environment_variable": "not supported (inline_string only)",
                }
            )
            return self.check_format(source.at("inline_string"), source.string("inline_string"))
        if log_format.has("text_format"):
            return self.check_format(log_format.at("text_format"), log_format.string("text_format"))
        raise BootstrapError(log_format.path, "expected text_format_source.inline_string or text_format")

    def check_format(self, where: str, fmt: str) -> str:
        """Refuse at start a format the access log cannot write (its formatter is the judge)."""
        try:
            from ..monitoring.access_log import FormatError, compile_format
        except ImportError:  # pragma: no cover - the monitoring package is part of apiproxy
            return fmt
        try:
            compile_format(fmt)
        except FormatError as error:
            raise BootstrapError(where, f"{error}: not supported") from None
        return fmt

    def other_cluster(self, cluster: Message) -> None:
        """A cluster the data path does not use: checked for fields Envoy refuses, otherwise ignored."""
        cluster.check(CLUSTER_FIELDS, refuse=False)
        self.findings.ignored.append(f"{cluster.path} (cluster {cluster.string('name')!r})")


def _flatten(struct: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, object]]:
    """Envoy's static_layer: nested objects are read as dotted keys."""
    for key, value in struct.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _runtime_integer(key: str, value: object) -> int:
    where = f"layered_runtime.static_layer.{key}"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BootstrapError(where, f"expected a positive integer, got {show(value)}")
    return value
