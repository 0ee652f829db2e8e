"""Configuration of the proxy: frozen dataclasses, and the parsers that validate every value once at start.

Every parser raises `ConfigError` naming the option, the value and what was expected, so the CLI can print
one line and exit 2 instead of a traceback. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from enum import StrEnum

from .addresses import host_port

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ConfigError(ValueError):
    """A configuration value is unusable. `str()` is the one line shown to the user."""

    def __init__(self, option: str, value: object, expected: str) -> None:
        self.option = option
        self.value = value
        self.expected = expected
        super().__init__(f"{option}: expected {expected}, got {value!r}")


class UpstreamProtocol(StrEnum):
    CONNECT = "connect"
    PROXY_PROTOCOL_V2 = "proxy-protocol-v2"


class DNSFamily(StrEnum):
    AUTO = "auto"
    V4 = "v4"
    V6 = "v6"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A host (DNS name or IP literal) and a port. `str()` gives `host:port` / `[v6]:port`."""

    host: str
    port: int

    @property
    def ip(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        return host_port(self.host, self.port)


DEFAULT_DESTINATION_HEADER = "X-Gardener-Destination"
LEGACY_DESTINATION_HEADER = "Reversed-VPN"


@dataclass(frozen=True, slots=True)
class TunnelConfig:
    """How each accepted connection is carried to the seed gateway."""

    upstream: Endpoint
    # CONNECT request-target and Host. Empty in PROXY-v2 mode.
    connect_authority: str = ""
    # Extra header lines of the CONNECT request, in order (the destination header(s)).
    connect_headers: tuple[tuple[str, str], ...] = ()
    upstream_protocol: UpstreamProtocol = UpstreamProtocol.CONNECT
    dns_family: DNSFamily = DNSFamily.AUTO
    # How long a resolved gateway address list is used before it is resolved again (Envoy's
    # LOGICAL_DNS default dns_refresh_rate is 5 s).
    dns_refresh: float = 5.0
    connect_timeout: float = 5.0
    connect_answer_timeout: float = 10.0
    # A client that has sent nothing this long after connecting is closed; nothing is dialled before its
    # first byte (a TLS client sends its ClientHello at once).
    first_byte_timeout: float = 10.0
    idle_timeout: float = 3600.0
    tcp_keepalive_time: float = 7200.0
    tcp_keepalive_interval: float = 55.0
    tcp_keepalive_probes: int = 9
    buffer_size: int = 32 * 1024
    # Move a direction that carries bulk data onto splice(2) (zero copy), see `apiproxy.splice`.
    splice: bool = True


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    listen: Endpoint
    max_connections: int = 10000
    # Concurrent tunnels from one source address; None: half of max_connections. hostNetwork pods share
    # the node's address, so this must stay generous.
    max_connections_per_source: int | None = None
    # Bind even if the address is not (yet) on an interface: the VIP reconciler may add it later.
    freebind: bool = False
    backlog: int = 4096


@dataclass(frozen=True, slots=True)
class VIPConfig:
    """Keeping the virtual IP on a local interface (what the Go sidecar did), see `apiproxy.vip`."""

    address: IPAddress
    interface: str = "lo"
    # The safety-net pass; netlink events trigger repairs in between.
    sync_interval: float = 60.0
    # On exit, remove the address (and the link, if this process created it).
    cleanup: bool = False
    # The historical NOTRACK/ACCEPT rules for VIP:port.
    setup_iptables: bool = False
    port: int = 443


DEFAULT_MONITORING_ADDRESSES = (Endpoint("0.0.0.0", 16910), Endpoint("::", 16910))

# Gardener's access-log line (an Envoy format string), the default of the access log.
GARDENER_ACCESS_LOG_FORMAT = (
    "[%START_TIME%] %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% rx %BYTES_SENT% tx %DURATION%ms "
    '"%DOWNSTREAM_REMOTE_ADDRESS%" "%UPSTREAM_HOST%"\n'
)


@dataclass(frozen=True, slots=True)
class MonitoringConfig:
    """Port 16910: /metrics and /ready; the access log; see `apiproxy.monitoring`."""

    addresses: tuple[Endpoint, ...] = DEFAULT_MONITORING_ADDRESSES
    envoy_compatible_metrics: bool = True
    # None: no access log. An Envoy format string (Envoy's %COMMAND% syntax).
    access_log_format: str | None = GARDENER_ACCESS_LOG_FORMAT
    # Envoy's names in the Envoy-compatible metrics (Gardener's config uses these).
    envoy_cluster_name: str = "kube_apiserver"
    envoy_stat_prefix: str = "kube_apiserver"


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listener: ListenerConfig
    tunnel: TunnelConfig
    vip: VIPConfig | None = None
    monitoring: MonitoringConfig | None = None
    drain_timeout: float = 20.0
    # A Unix socket path for handing the listener over between this process and its successor (rolling
    # updates, see `apiproxy.handover`); None: no handover, bind as usual.
    handover_socket: str | None = None


# --- parsers -------------------------------------------------------------------------------------------

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(option: str, value: str | float | int, *, allow_zero: bool = False) -> float:
    """Go-style durations (`5s`, `1m30s`, `250ms`, `1h`) or a plain number of seconds. Returns seconds."""
    expected = "a duration such as 5s, 250ms, 1m or 1h (units ns, us, ms, s, m, h)"
    if isinstance(value, bool):
        raise ConfigError(option, value, expected)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos = 0
            seconds = 0.0
            if not text:
                raise ConfigError(option, value, expected) from None
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    raise ConfigError(option, value, expected) from None
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text):
                raise ConfigError(option, value, expected) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(option, value, expected)
    if seconds == 0 and not allow_zero:
        raise ConfigError(option, value, "a duration greater than zero")
    return seconds


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
}  # fmt: skip
_SIZE = re.compile(r"(\d+)\s*([a-zA-Z]*)")


def parse_size(option: str, value: str | int, *, minimum: int = 1, maximum: int = 1 << 40) -> int:
    """A byte count with an optional unit: `32768`, `32KiB`, `64Ki`, `1MB`. Returns bytes."""
    expected = f"a size between {minimum} and {maximum} bytes, such as 32KiB, 1MiB or 65536"
    if isinstance(value, bool):
        raise ConfigError(option, value, expected)
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise ConfigError(option, value, expected + " (units B, KB, MB, GB, KiB, MiB, GiB)")
        size = int(match.group(1)) * _SIZE_UNITS[unit]
    if not minimum <= size <= maximum:
        raise ConfigError(option, value, expected)
    return size


def parse_int(option: str, value: str | int, *, minimum: int, maximum: int) -> int:
    expected = f"an integer between {minimum} and {maximum}"
    if isinstance(value, bool):
        raise ConfigError(option, value, expected)
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(option, value, expected) from None
    if not minimum <= number <= maximum:
        raise ConfigError(option, value, expected)
    return number


# A DNS name: labels of letters, digits, '-' and '_' (seen in some internal names), 1-63 characters each,
# optionally ending in '.', as Gardener writes them (`api.bar.foo.internal.example.com.`).
_HOSTNAME = re.compile(
    r"(?=.{1,254}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


def is_hostname(text: str) -> bool:
    return _HOSTNAME.fullmatch(text) is not None


def parse_ip(option: str, value: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ConfigError(option, value, "an IPv4 or IPv6 address") from None


def parse_endpoint(
    option: str, value: str, *, default_port: int | None = None, require_ip: bool = False
) -> Endpoint:
    """`host:port`, `[v6]:port`, or (with a default port) a bare host / bracketed IPv6 address."""
    kind = "IP" if require_ip else "HOST"
    expected = f"{kind}:PORT (IPv6 as [ADDRESS]:PORT)" + (
        f" or {kind} (port {default_port})" if default_port else ""
    )
    text = value.strip()
    port_text: str | None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ConfigError(option, value, expected)
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(option, value, expected)
        port_text = rest[1:] if rest else None
        try:
            if not isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
                raise ValueError
        except ValueError:
            raise ConfigError(option, value, expected) from None
    else:
        host, sep, port_text_raw = text.rpartition(":")
        if not sep:
            host, port_text = text, None
        elif ":" in host:  # an unbracketed IPv6 address: the port is ambiguous
            raise ConfigError(option, value, expected)
        else:
            port_text = port_text_raw
    if port_text is None:
        if default_port is None:
            raise ConfigError(option, value, expected)
        port = default_port
    else:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ConfigError(option, value, f"{expected} with a port between 1 and 65535")
        port = int(port_text)
    try:
        ip = ipaddress.ip_address(host)
        host = str(ip)
    except ValueError:
        if require_ip or not is_hostname(host):
            raise ConfigError(option, value, expected) from None
    return Endpoint(host, port)


# RFC 9110 §5.6.2: a header name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: field-value is visible ASCII, spaces and tabs inside; we refuse obs-text (bytes >= 0x80)
# so nothing ambiguous ever reaches the gateway.
_FIELD_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")


def parse_header_name(option: str, value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ConfigError(option, value, "an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
    return value


# Header names that frame the CONNECT request (Host, the body's length and coding), manage the connection
# hop by hop (Connection and the fields it names, Upgrade, TE, Expect) or address a proxy (Proxy-*), per
# RFC 9110/9112: a destination header by one of these names would change what the gateway reads as the
# request. (h11 refuses Host and Content-Length outright, with a traceback when they came from a flag.)
_RESERVED_HEADER_NAMES = (
    "Host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "TE", "Trailer", "Keep-Alive",
    "Expect", "HTTP2-Settings", "Proxy-*",
)  # fmt: skip
_RESERVED_NAMES = frozenset(name.lower() for name in _RESERVED_HEADER_NAMES if not name.endswith("*"))
_RESERVED_PREFIXES = tuple(name[:-1].lower() for name in _RESERVED_HEADER_NAMES if name.endswith("*"))


def parse_connect_header_name(option: str, value: str, *, proxy_headers: bool = False) -> str:
    """A header name apiproxy may add to its CONNECT request: a token, and none of the reserved names.
    `proxy_headers`: Proxy-* names are allowed (an Envoy bootstrap's headers_to_add may carry the gateway's
    Proxy-Authorization; a destination header may not)."""
    name = parse_header_name(option, value).lower()
    if name in _RESERVED_NAMES or (name.startswith(_RESERVED_PREFIXES) and not proxy_headers):
        reserved = [n for n in _RESERVED_HEADER_NAMES if not (proxy_headers and n == "Proxy-*")]
        raise ConfigError(
            option, value, f"a header name other than {', '.join(reserved)} (they frame or route the request)"
        )
    return value


def parse_header_value(option: str, value: str) -> str:
    if not _FIELD_VALUE.fullmatch(value):
        raise ConfigError(
            option,
            value,
            "a non-empty HTTP header value of visible ASCII characters (no CR, LF or control bytes)",
        )
    return value


def parse_authority(option: str, value: str) -> str:
    """The CONNECT request-target (RFC 9110 §9.3.6: authority-form, `host:port`)."""
    return str(parse_endpoint(option, value))
