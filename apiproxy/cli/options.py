"""The option helper and the options `apiproxy run` and `apiproxy tunnel` share: each declared once, with
its environment variable (APIPROXY_<NAME>) and a metavar saying what it takes, and `TunnelOptions`, which
turns their raw values into a `TunnelConfig`.

`Command` is the commands' class: a refused value that came from the environment names the variable too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer
import typer.core

from ..addresses import bracket
from ..config import (
    DEFAULT_DESTINATION_HEADER,
    ConfigError,
    DNSFamily,
    TunnelConfig,
    UpstreamProtocol,
    parse_authority,
    parse_connect_header_name,
    parse_duration,
    parse_endpoint,
    parse_header_value,
    parse_size,
)

ENV_PREFIX = "APIPROXY_"

# What --help shows after each option (typer would print its Python type, `<str>`).
DURATION = "DURATION"  # Go units: 250ms, 5s, 1m, 1h
SIZE = "SIZE"  # 32KiB, 1MiB, 65536
HOST_PORT = "HOST:PORT"
IP = "IP"
NAME = "NAME"
VALUE = "VALUE"
COUNT = "N"
PATH = "PATH"


def option(*names: str, env: str, help: str, metavar: str | None = None) -> Any:
    """An option settable as APIPROXY_<env> too. (Typed Any: typer's OptionInfo goes in `Annotated`.)"""
    return typer.Option(*names, envvar=ENV_PREFIX + env, help=help, show_envvar=True, metavar=metavar)


class Command(typer.core.TyperCommand):
    """A sub-command whose refused values name their environment variable when they came from one:
    `APIPROXY_IDLE_TIMEOUT (--idle-timeout): expected ..., got 'banana'`.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as error:
            variable = self._variable_behind(ctx, error.option)
            if variable is None:
                raise
            raise ConfigError(f"{variable} ({error.option})", error.value, error.expected) from None

    def _variable_behind(self, ctx: Any, flag: str) -> str | None:
        for param in self.params:
            if flag not in (*param.opts, *param.secondary_opts) or not isinstance(param.envvar, str):
                continue
            source = ctx.get_parameter_source(param.name)
            # (Compared by name: the enum lives in typer's private copy of click.)
            return param.envvar if getattr(source, "name", None) == "ENVIRONMENT" else None
        return None


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
    first_byte_timeout: str = "10s"

    def build(self) -> TunnelConfig:
        if not self.upstream:
            raise ConfigError("--upstream", "", "HOST:PORT of the seed gateway (required)")
        upstream = parse_endpoint("--upstream", self.upstream)
        protocol = choice("--upstream-protocol", self.upstream_protocol, UpstreamProtocol)
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
            headers = tuple(
                (parse_connect_header_name("--destination-header", name), value) for name in names
            )
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
            dns_family=choice("--dns-family", self.dns_family, DNSFamily),
            dns_refresh=parse_duration("--dns-refresh", self.dns_refresh),
            connect_timeout=parse_duration("--connect-timeout", self.connect_timeout),
            connect_answer_timeout=parse_duration("--connect-answer-timeout", self.connect_answer_timeout),
            idle_timeout=parse_duration("--idle-timeout", self.idle_timeout),
            tcp_keepalive_time=_whole_seconds("--tcp-keepalive-time", self.tcp_keepalive_time),
            tcp_keepalive_interval=_whole_seconds("--tcp-keepalive-interval", self.tcp_keepalive_interval),
            buffer_size=parse_size("--buffer-size", self.buffer_size, minimum=1024, maximum=64 * 1024 * 1024),
            splice=self.splice,
            first_byte_timeout=parse_duration(
                "--first-byte-timeout", self.first_byte_timeout, allow_zero=True
            ),
        )


def _whole_seconds(option: str, value: str) -> float:
    seconds = parse_duration(option, value)
    if seconds < 1 or seconds > 32767:  # the kernel's TCP_KEEPIDLE/TCP_KEEPINTVL range
        raise ConfigError(option, value, "a duration between 1s and 32767s")
    return float(int(seconds))


_Choice = TypeVar("_Choice", UpstreamProtocol, DNSFamily)


def choice(option: str, value: str, enum: type[_Choice]) -> _Choice:
    try:
        return enum(value.strip().lower())
    except ValueError:
        choices = ", ".join(member.value for member in enum)
        raise ConfigError(option, value, f"one of {choices}") from None


def _choices(enum: type[UpstreamProtocol] | type[DNSFamily]) -> str:
    return "[" + "|".join(member.value for member in enum) + "]"


UpstreamOpt = Annotated[
    str | None,
    option(
        "--upstream",
        env="UPSTREAM",
        metavar=HOST_PORT,
        help="The seed gateway (e.g. api.bar.foo.internal.example.com.:8443).",
    ),
]
ConnectAuthorityOpt = Annotated[
    str | None,
    option(
        "--connect-authority",
        env="CONNECT_AUTHORITY",
        metavar=HOST_PORT,
        help="CONNECT request-target and Host [default: <upstream host>:443].",
    ),
]
DestinationOpt = Annotated[
    str | None,
    option(
        "--destination",
        env="DESTINATION",
        metavar=VALUE,
        help="Destination header value, e.g. outbound|443||kube-apiserver.<ns>.svc.cluster.local.",
    ),
]
DestinationHeaderOpt = Annotated[
    list[str] | None,
    option(
        "--destination-header",
        env="DESTINATION_HEADER",
        metavar=NAME,
        help=f"Header carrying the destination; repeat for several [default: {DEFAULT_DESTINATION_HEADER}; legacy: Reversed-VPN].",
    ),
]
UpstreamProtocolOpt = Annotated[
    str,
    option(
        "--upstream-protocol",
        env="UPSTREAM_PROTOCOL",
        metavar=_choices(UpstreamProtocol),
        help="CONNECT, or the legacy PROXY protocol v2 header.",
    ),
]
DNSFamilyOpt = Annotated[
    str,
    option("--dns-family", env="DNS_FAMILY", metavar=_choices(DNSFamily), help="Gateway address family."),
]
DNSRefreshOpt = Annotated[
    str,
    option(
        "--dns-refresh", env="DNS_REFRESH", metavar=DURATION, help="Re-resolve the gateway name this often."
    ),
]
ConnectTimeoutOpt = Annotated[
    str,
    option(
        "--connect-timeout",
        env="CONNECT_TIMEOUT",
        metavar=DURATION,
        help="TCP connect timeout per gateway address.",
    ),
]
AnswerTimeoutOpt = Annotated[
    str,
    option(
        "--connect-answer-timeout",
        env="CONNECT_ANSWER_TIMEOUT",
        metavar=DURATION,
        help="How long to wait for the CONNECT answer.",
    ),
]
FirstByteTimeoutOpt = Annotated[
    str,
    option(
        "--first-byte-timeout",
        env="FIRST_BYTE_TIMEOUT",
        metavar=DURATION,
        help="Close a client that sends nothing this long; the gateway is dialled only after its first byte "
        "(0s: dial at once, as Envoy does, for protocols where the server speaks first).",
    ),
]
IdleTimeoutOpt = Annotated[
    str,
    option(
        "--idle-timeout",
        env="IDLE_TIMEOUT",
        metavar=DURATION,
        help="Close a tunnel after this long without traffic.",
    ),
]
KeepaliveTimeOpt = Annotated[
    str,
    option(
        "--tcp-keepalive-time",
        env="TCP_KEEPALIVE_TIME",
        metavar=DURATION,
        help="Gateway TCP keepalive idle time.",
    ),
]
KeepaliveIntervalOpt = Annotated[
    str,
    option(
        "--tcp-keepalive-interval",
        env="TCP_KEEPALIVE_INTERVAL",
        metavar=DURATION,
        help="Gateway TCP keepalive probe interval.",
    ),
]
BufferSizeOpt = Annotated[
    str,
    option(
        "--buffer-size",
        env="BUFFER_SIZE",
        metavar=SIZE,
        help="Write buffer per direction and tunnel (32KiB, 65536, ...).",
    ),
]
SpliceOpt = Annotated[
    bool,
    option(
        "--splice/--no-splice",
        env="SPLICE",
        help="Carry a direction that moves bulk data with splice(2), zero copy (Linux).",
    ),
]
VerboseOpt = Annotated[
    int, typer.Option("-v", "--verbose", count=True, help="More logs (-v: a line per tunnel).")
]
