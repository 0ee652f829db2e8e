"""`apiproxy run`: the node proxy. Every option can also be set as APIPROXY_<NAME> in the environment."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, TypeVar

import typer

from ..addresses import bracket, host_port
from ..config import (
    DEFAULT_DESTINATION_HEADER,
    DEFAULT_MONITORING_ADDRESSES,
    GARDENER_ACCESS_LOG_FORMAT,
    ConfigError,
    DNSFamily,
    IPAddress,
    ListenerConfig,
    MonitoringConfig,
    ProxyConfig,
    TunnelConfig,
    UpstreamProtocol,
    parse_authority,
    parse_duration,
    parse_endpoint,
    parse_header_name,
    parse_header_value,
    parse_int,
    parse_ip,
    parse_size,
)
from ..vip.options import build_vip


def _opt(*names: str, env: str, help: str) -> typer.models.OptionInfo:
    option: typer.models.OptionInfo = typer.Option(
        *names, envvar=f"APIPROXY_{env}", help=help, show_envvar=True
    )
    return option


@dataclass(frozen=True)
class TunnelOptions:
    """The raw option values that describe tunnels, shared by `run` and `tunnel`."""

    upstream: str | None
    connect_authority: str | None
    destination: str | None
    destination_header: list[str] | None
    upstream_protocol: str
    dns_family: str
    dns_refresh: str
    connect_timeout: str
    connect_answer_timeout: str
    idle_timeout: str
    tcp_keepalive_time: str
    tcp_keepalive_interval: str
    buffer_size: str
    splice: bool = True

    def build(self) -> TunnelConfig:
        if not self.upstream:
            raise ConfigError("--upstream", "", "HOST:PORT of the seed gateway (required)")
        upstream = parse_endpoint("--upstream", self.upstream)
        protocol = _choice("--upstream-protocol", self.upstream_protocol, UpstreamProtocol)
        headers: tuple[tuple[str, str], ...] = ()
        authority = ""
        if protocol is UpstreamProtocol.CONNECT:
            if not self.destination:
                raise ConfigError(
                    "--destination",
                    "",
                    "the destination header value, e.g. outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local",
                )
            value = parse_header_value("--destination", self.destination)
            names = self.destination_header or [DEFAULT_DESTINATION_HEADER]
            headers = tuple((parse_header_name("--destination-header", name), value) for name in names)
            if len({name.lower() for name in names}) != len(names):
                raise ConfigError("--destination-header", ",".join(names), "distinct header names")
            authority = (
                parse_authority("--connect-authority", self.connect_authority)
                if self.connect_authority
                else parse_authority("--upstream", f"{bracket(upstream.host)}:443")
            )
        return TunnelConfig(
            upstream=upstream,
            connect_authority=authority,
            connect_headers=headers,
            upstream_protocol=protocol,
            dns_family=_choice("--dns-family", self.dns_family, DNSFamily),
            dns_refresh=parse_duration("--dns-refresh", self.dns_refresh),
            connect_timeout=parse_duration("--connect-timeout", self.connect_timeout),
            connect_answer_timeout=parse_duration("--connect-answer-timeout", self.connect_answer_timeout),
            idle_timeout=parse_duration("--idle-timeout", self.idle_timeout),
            tcp_keepalive_time=_whole_seconds("--tcp-keepalive-time", self.tcp_keepalive_time),
            tcp_keepalive_interval=_whole_seconds("--tcp-keepalive-interval", self.tcp_keepalive_interval),
            buffer_size=parse_size("--buffer-size", self.buffer_size, minimum=1024, maximum=64 * 1024 * 1024),
            splice=self.splice,
        )


def _whole_seconds(option: str, value: str) -> float:
    seconds = parse_duration(option, value)
    if seconds < 1 or seconds > 32767:  # the kernel's TCP_KEEPIDLE/TCP_KEEPINTVL range
        raise ConfigError(option, value, "a duration between 1s and 32767s")
    return float(int(seconds))


_Choice = TypeVar("_Choice", UpstreamProtocol, DNSFamily)


def _choice(option: str, value: str, enum: type[_Choice]) -> _Choice:
    try:
        return enum(value.strip().lower())
    except ValueError:
        choices = ", ".join(member.value for member in enum)
        raise ConfigError(option, value, f"one of {choices}") from None


def build_listener(
    listen: str | None, ip_address: str | None, max_connections: str
) -> tuple[ListenerConfig, IPAddress | None]:
    vip = parse_ip("--ip-address", ip_address) if ip_address else None
    if listen:
        endpoint = parse_endpoint("--listen", listen)
    elif vip is not None:
        endpoint = parse_endpoint("--ip-address", host_port(str(vip), 443))
    else:
        raise ConfigError("--listen", "", "HOST:PORT to accept on, or --ip-address (then VIP:443)")
    limit = parse_int("--max-connections", max_connections, minimum=1, maximum=1_000_000)
    return ListenerConfig(listen=endpoint, max_connections=limit), vip


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


# Option declarations shared with `apiproxy tunnel`.
UpstreamOpt = Annotated[
    str | None,
    _opt(
        "--upstream",
        env="UPSTREAM",
        help="The seed gateway, HOST:PORT (e.g. api.bar.foo.internal.example.com.:8443).",
    ),
]
ConnectAuthorityOpt = Annotated[
    str | None,
    _opt(
        "--connect-authority",
        env="CONNECT_AUTHORITY",
        help="CONNECT request-target and Host [default: <upstream host>:443].",
    ),
]
DestinationOpt = Annotated[
    str | None,
    _opt(
        "--destination",
        env="DESTINATION",
        help="Destination header value, e.g. outbound|443||kube-apiserver.<ns>.svc.cluster.local.",
    ),
]
DestinationHeaderOpt = Annotated[
    list[str] | None,
    _opt(
        "--destination-header",
        env="DESTINATION_HEADER",
        help=f"Header carrying the destination; repeat for several [default: {DEFAULT_DESTINATION_HEADER}; legacy: Reversed-VPN].",
    ),
]
UpstreamProtocolOpt = Annotated[
    str,
    _opt("--upstream-protocol", env="UPSTREAM_PROTOCOL", help="connect, or the legacy proxy-protocol-v2."),
]
DNSFamilyOpt = Annotated[
    str, _opt("--dns-family", env="DNS_FAMILY", help="Gateway address family: auto, v4 or v6.")
]
DNSRefreshOpt = Annotated[
    str, _opt("--dns-refresh", env="DNS_REFRESH", help="Re-resolve the gateway name this often.")
]
ConnectTimeoutOpt = Annotated[
    str, _opt("--connect-timeout", env="CONNECT_TIMEOUT", help="TCP connect timeout per gateway address.")
]
AnswerTimeoutOpt = Annotated[
    str,
    _opt(
        "--connect-answer-timeout",
        env="CONNECT_ANSWER_TIMEOUT",
        help="How long to wait for the CONNECT answer.",
    ),
]
IdleTimeoutOpt = Annotated[
    str, _opt("--idle-timeout", env="IDLE_TIMEOUT", help="Close a tunnel after this long without traffic.")
]
KeepaliveTimeOpt = Annotated[
    str, _opt("--tcp-keepalive-time", env="TCP_KEEPALIVE_TIME", help="Gateway TCP keepalive idle time.")
]
KeepaliveIntervalOpt = Annotated[
    str,
    _opt(
        "--tcp-keepalive-interval", env="TCP_KEEPALIVE_INTERVAL", help="Gateway TCP keepalive probe interval."
    ),
]
BufferSizeOpt = Annotated[
    str, _opt("--buffer-size", env="BUFFER_SIZE", help="Write buffer per direction and tunnel.")
]
SpliceOpt = Annotated[
    bool,
    _opt(
        "--splice/--no-splice",
        env="SPLICE",
        help="Carry a direction that moves bulk data with splice(2), zero copy (Linux).",
    ),
]


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        upstream: UpstreamOpt = None,
        listen: Annotated[
            str | None,
            _opt("--listen", env="LISTEN", help="Where to accept, HOST:PORT [default: <ip-address>:443]."),
        ] = None,
        ip_address: Annotated[
            str | None, _opt("--ip-address", env="IP_ADDRESS", help="The virtual IP (VIP).")
        ] = None,
        connect_authority: ConnectAuthorityOpt = None,
        destination: DestinationOpt = None,
        destination_header: DestinationHeaderOpt = None,
        upstream_protocol: UpstreamProtocolOpt = "connect",
        dns_family: DNSFamilyOpt = "auto",
        dns_refresh: DNSRefreshOpt = "5s",
        connect_timeout: ConnectTimeoutOpt = "5s",
        connect_answer_timeout: AnswerTimeoutOpt = "10s",
        idle_timeout: IdleTimeoutOpt = "1h",
        tcp_keepalive_time: KeepaliveTimeOpt = "7200s",
        tcp_keepalive_interval: KeepaliveIntervalOpt = "55s",
        buffer_size: BufferSizeOpt = "32KiB",
        splice: SpliceOpt = True,
        max_connections: Annotated[
            str,
            _opt(
                "--max-connections",
                env="MAX_CONNECTIONS",
                help="Concurrent tunnels; more are closed at once.",
            ),
        ] = "10000",
        drain_timeout: Annotated[
            str,
            _opt("--drain-timeout", env="DRAIN_TIMEOUT", help="On SIGTERM, wait this long for open tunnels."),
        ] = "20s",
        interface: Annotated[
            str,
            _opt(
                "--interface",
                env="INTERFACE",
                help="Interface the VIP is kept on (created as a dummy link if missing).",
            ),
        ] = "lo",
        sync_interval: Annotated[
            str,
            _opt(
                "--sync-interval",
                env="SYNC_INTERVAL",
                help="Periodic VIP check; netlink events repair at once.",
            ),
        ] = "1m",
        manage_vip: Annotated[
            bool | None,
            _opt(
                "--manage-vip/--no-manage-vip",
                env="MANAGE_VIP",
                help="Keep --ip-address on --interface [default: on with --ip-address].",
            ),
        ] = None,
        cleanup: Annotated[
            bool,
            _opt(
                "--cleanup", env="CLEANUP", help="On exit, remove the VIP (and a link this process created)."
            ),
        ] = False,
        setup_iptables: Annotated[
            bool,
            _opt("--setup-iptables", env="SETUP_IPTABLES", help="Keep NOTRACK/ACCEPT rules for VIP:port."),
        ] = False,
        metrics_address: Annotated[
            list[str] | None,
            _opt(
                "--metrics-address",
                env="METRICS_ADDRESS",
                help="Where /metrics and /ready are served; repeatable; 'off' for none [default: 0.0.0.0:16910 and [::]:16910].",
            ),
        ] = None,
        envoy_compatible_metrics: Annotated[
            bool,
            _opt(
                "--envoy-compatible-metrics/--no-envoy-compatible-metrics",
                env="ENVOY_COMPATIBLE_METRICS",
                help="Also serve the Envoy metric names Gardener's dashboards use.",
            ),
        ] = True,
        access_log: Annotated[
            bool,
            _opt(
                "--access-log/--no-access-log", env="ACCESS_LOG", help="One line per closed tunnel on stdout."
            ),
        ] = True,
        verbose: Annotated[
            int, typer.Option("-v", "--verbose", count=True, help="More logs (-v: a line per tunnel).")
        ] = 0,
        log_format: Annotated[
            str, _opt("--log-format", env="LOG_FORMAT", help="Application log format: text or json.")
        ] = "text",
    ) -> int:
        """Serve the node proxy: accept on the VIP and tunnel each connection to the seed gateway."""
        from .. import logs
        from ..runtime import run_proxy

        tunnel = TunnelOptions(
            upstream, connect_authority, destination, destination_header, upstream_protocol, dns_family, dns_refresh,
            connect_timeout, connect_answer_timeout, idle_timeout, tcp_keepalive_time, tcp_keepalive_interval,
            buffer_size, splice,
        ).build()  # fmt: skip
        listener, vip = build_listener(listen, ip_address, max_connections)
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
        config = ProxyConfig(
            listener=listener, tunnel=tunnel, vip=vip_config, monitoring=monitoring, drain_timeout=drain
        )
        logs.setup(verbose, log_format)
        return run_proxy(config)
