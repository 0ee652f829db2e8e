"""`apiproxy run`: the node proxy. Every option can also be set as APIPROXY_<NAME> in the environment."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from ..addresses import host_port
from ..config import (
    DEFAULT_MONITORING_ADDRESSES,
    GARDENER_ACCESS_LOG_FORMAT,
    ConfigError,
    IPAddress,
    ListenerConfig,
    MonitoringConfig,
    ProxyConfig,
    parse_duration,
    parse_endpoint,
    parse_int,
)
from ..handover import parse_socket_path
from ..vip.options import build_vip, parse_vip
from .options import (
    COUNT,
    DURATION,
    HOST_PORT,
    IP,
    NAME,
    AnswerTimeoutOpt,
    BufferSizeOpt,
    Command,
    ConnectAuthorityOpt,
    ConnectTimeoutOpt,
    DestinationHeaderOpt,
    DestinationOpt,
    DNSFamilyOpt,
    DNSRefreshOpt,
    FirstByteTimeoutOpt,
    IdleTimeoutOpt,
    KeepaliveIntervalOpt,
    KeepaliveTimeOpt,
    SpliceOpt,
    TunnelOptions,
    UpstreamOpt,
    UpstreamProtocolOpt,
    VerboseOpt,
    option,
)


def build_listener(
    listen: str | None, ip_address: str | None, max_connections: str, max_per_source: str | None = None
) -> tuple[ListenerConfig, IPAddress | None]:
    vip = parse_vip("--ip-address", ip_address) if ip_address else None
    if listen:
        endpoint = parse_endpoint("--listen", listen)
    elif vip is not None:
        endpoint = parse_endpoint("--ip-address", host_port(str(vip), 443))
    else:
        raise ConfigError("--listen", "", "HOST:PORT to accept on, or --ip-address (then VIP:443)")
    limit = parse_int("--max-connections", max_connections, minimum=1, maximum=1_000_000)
    per_source = (
        parse_int("--max-connections-per-source", max_per_source, minimum=1, maximum=1_000_000)
        if max_per_source
        else None
    )
    return ListenerConfig(listen=endpoint, max_connections=limit, max_connections_per_source=per_source), vip


def build_monitoring(
    addresses: list[str] | None, envoy_compatible: bool, access_log: bool
) -> MonitoringConfig | None:
    if addresses and [a.strip().lower() for a in addresses] == ["off"]:
        return None
    endpoints = (
        tuple(parse_endpoint("--metrics-address", a, require_ip=True) for a in addresses)
        if addresses
        else DEFAULT_MONITORING_ADDRESSES
    )
    return MonitoringConfig(
        addresses=endpoints,
        envoy_compatible_metrics=envoy_compatible,
        access_log_format=GARDENER_ACCESS_LOG_FORMAT if access_log else None,
    )


def register(app: typer.Typer) -> None:
    @app.command("run", cls=Command)
    def run(
        ctx: typer.Context,
        upstream: UpstreamOpt = None,
        listen: Annotated[
            str | None,
            option(
                "--listen",
                env="LISTEN",
                metavar=HOST_PORT,
                help="Where to accept [default: <ip-address>:443].",
            ),
        ] = None,
        ip_address: Annotated[
            str | None, option("--ip-address", env="IP_ADDRESS", metavar=IP, help="The virtual IP (VIP).")
        ] = None,
        connect_authority: ConnectAuthorityOpt = None,
        destination: DestinationOpt = None,
        destination_header: DestinationHeaderOpt = None,
        upstream_protocol: UpstreamProtocolOpt = "connect",
        dns_family: DNSFamilyOpt = "auto",
        dns_refresh: DNSRefreshOpt = "5s",
        connect_timeout: ConnectTimeoutOpt = "5s",
        connect_answer_timeout: AnswerTimeoutOpt = "10s",
        first_byte_timeout: FirstByteTimeoutOpt = "10s",
        idle_timeout: IdleTimeoutOpt = "1h",
        tcp_keepalive_time: KeepaliveTimeOpt = "7200s",
        tcp_keepalive_interval: KeepaliveIntervalOpt = "55s",
        buffer_size: BufferSizeOpt = "32KiB",
        splice: SpliceOpt = True,
        max_connections: Annotated[
            str,
            option(
                "--max-connections",
                env="MAX_CONNECTIONS",
                metavar=COUNT,
                help="Concurrent tunnels; more are closed at once.",
            ),
        ] = "10000",
        max_connections_per_source: Annotated[
            str | None,
            option(
                "--max-connections-per-source",
                env="MAX_CONNECTIONS_PER_SOURCE",
                metavar=COUNT,
                help="Concurrent tunnels from one source address; more are closed at once "
                "[default: half of --max-connections].",
            ),
        ] = None,
        drain_timeout: Annotated[
            str,
            option(
                "--drain-timeout",
                env="DRAIN_TIMEOUT",
                metavar=DURATION,
                help="On SIGTERM, wait this long for open tunnels.",
            ),
        ] = "20s",
        interface: Annotated[
            str,
            option(
                "--interface",
                env="INTERFACE",
                metavar=NAME,
                help="Interface the VIP is kept on (created as a dummy link if missing).",
            ),
        ] = "lo",
        sync_interval: Annotated[
            str,
            option(
                "--sync-interval",
                env="SYNC_INTERVAL",
                metavar=DURATION,
                help="Periodic VIP check; netlink events repair at once.",
            ),
        ] = "1m",
        manage_vip: Annotated[
            bool | None,
            option(
                "--manage-vip/--no-manage-vip",
                env="MANAGE_VIP",
                help="Keep --ip-address on --interface [default: on with --ip-address].",
            ),
        ] = None,
        cleanup: Annotated[
            bool,
            option(
                "--cleanup", env="CLEANUP", help="On exit, remove the VIP (and a link this process created)."
            ),
        ] = False,
        setup_iptables: Annotated[
            bool,
            option("--setup-iptables", env="SETUP_IPTABLES", help="Keep NOTRACK/ACCEPT rules for VIP:port."),
        ] = False,
        metrics_address: Annotated[
            list[str] | None,
            option(
                "--metrics-address",
                env="METRICS_ADDRESS",
                metavar="IP:PORT|off",
                help="Where /metrics and /ready are served; repeatable; 'off' for none [default: 0.0.0.0:16910 and [::]:16910].",
            ),
        ] = None,
        envoy_compatible_metrics: Annotated[
            bool,
            option(
                "--envoy-compatible-metrics/--no-envoy-compatible-metrics",
                env="ENVOY_COMPATIBLE_METRICS",
                help="Also serve the Envoy metric names Gardener's dashboards use.",
            ),
        ] = True,
        access_log: Annotated[
            bool,
            option(
                "--access-log/--no-access-log", env="ACCESS_LOG", help="One line per closed tunnel on stdout."
            ),
        ] = True,
        verbose: VerboseOpt = 0,
        log_format: Annotated[
            str,
            option("--log-format", env="LOG_FORMAT", metavar="[text|json]", help="Application log format."),
        ] = "text",
        handover_socket: Annotated[
            str | None,
            option(
                "--handover-socket",
                env="HANDOVER_SOCKET",
                metavar="PATH",
                help="Unix socket where a rolling update hands the listener over to the successor process.",
            ),
        ] = None,
    ) -> int:
        """Serve the node proxy: accept on the VIP and tunnel each connection to the seed gateway."""
        from .. import logs
        from ..runtime import run_proxy

        tunnel = TunnelOptions(
            upstream, connect_authority, destination, destination_header, upstream_protocol, dns_family, dns_refresh,
            connect_timeout, connect_answer_timeout, idle_timeout, tcp_keepalive_time, tcp_keepalive_interval,
            buffer_size, splice, first_byte_timeout,
        ).build()  # fmt: skip
        listener, vip = build_listener(listen, ip_address, max_connections, max_connections_per_source)
        vip_config = None
        if manage_vip or (manage_vip is None and vip is not None):
            if vip is None:
                raise ConfigError("--manage-vip", True, "--ip-address too (the VIP to manage)")
            vip_config = build_vip(
                vip, interface, sync_interval, cleanup, setup_iptables, listener.listen.port
            )
            # Bind before the reconciler has added the address (IP_FREEBIND): no start-up ordering race.
            listener = replace(listener, freebind=True)
        monitoring = build_monitoring(metrics_address, envoy_compatible_metrics, access_log)
        drain = parse_duration("--drain-timeout", drain_timeout, allow_zero=True)
        if log_format not in ("text", "json"):
            raise ConfigError("--log-format", log_format, "text or json")
        handover = (
            parse_socket_path("--handover-socket", handover_socket) if handover_socket is not None else None
        )
        config = ProxyConfig(
            listener=listener, tunnel=tunnel, vip=vip_config, monitoring=monitoring, drain_timeout=drain,
            handover_socket=handover,
        )  # fmt: skip
        if ctx.obj and ctx.obj.get("exec_to_serve"):
            from ..serve import exec_into_server

            exec_into_server(config, verbose, log_format)  # shed what parsing needed (see serve.py)
        logs.setup(verbose, log_format)
        return run_proxy(config)
