"""The access log: one line per closed tunnel, written from an Envoy format string, sans-I/O.

`compile_format` turns a format such as Gardener's
  [%START_TIME%] %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% rx %BYTES_SENT% tx %DURATION%ms ...
into a function of a `TunnelRecord`. It knows Envoy's commands that make sense for a TCP tunnel
(`%COMMAND%`, `%COMMAND(arg)%`, `%COMMAND:N%` truncates to N characters, `%%` is a percent sign); an unknown
command is refused at start, as Envoy refuses it. A missing value prints `-`, as in Envoy.

RESPONSE_CODE is the gateway's answer to the CONNECT (200, 301, 503), 0 when it gave none. (Envoy's
tcp_proxy prints 0 here even for a tunnel the gateway accepted; the CONNECT status is what an operator
reading the log needs.) RESPONSE_FLAGS are Envoy's short flags for the same failures (UF,URX: no usable
gateway connection; UH: no gateway address; UT: no CONNECT answer in time; UC: the gateway hung up).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..addresses import host_port
from ..reasons import RESPONSE_FLAGS, Reason

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class TunnelRecord:
    """What the access log knows of one closed tunnel."""

    start_time: float  # wall clock, seconds since the epoch
    duration: float  # seconds
    response_code: int
    reason: Reason
    bytes_received: int  # from the client
    bytes_sent: int  # to the client
    downstream_remote: Address | None
    downstream_local: Address | None
    upstream_host: Address | None
    upstream_cluster: str


DEFAULT_START_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%3fZ"


class FormatError(ValueError):
    """The format string uses something Envoy's TCP access log does not have. `str()` says what."""


def _address(value: Address | None) -> str:
    if value is None:
        return "-"
    return host_port(*value)


def _host(value: Address | None) -> str:
    return "-" if value is None else value[0]


def _port(value: Address | None) -> str:
    return "-" if value is None else str(value[1])


_FRACTION = re.compile(r"%([1-9]?)f")


def _start_time(pattern: str) -> Callable[[TunnelRecord], str]:
    """Envoy's START_TIME: strftime in UTC, plus %f / %Nf (fractional seconds, N digits) and %s."""

    # Split once: strftime pieces (cached per second: tunnels end in bursts) and fraction widths.
    pieces = _FRACTION.split(pattern)
    formats, widths = pieces[0::2], [int(w or 9) for w in pieces[1::2]]
    cache: list[object] = [None, ()]

    def render(record: TunnelRecord) -> str:
        seconds = int(record.start_time)
        nanos = round((record.start_time - seconds) * 1e9)
        if nanos >= 1_000_000_000:
            seconds, nanos = seconds + 1, nanos - 1_000_000_000
        if cache[0] != seconds:
            moment = time.gmtime(seconds)
            cache[:] = [seconds, [time.strftime(f.replace("%s", str(seconds)), moment) for f in formats]]
        formatted: list[str] = cache[1]  # type: ignore[assignment]
        if not widths:
            return formatted[0]
        digits = f"{nanos:09d}"
        out = [formatted[0]]
        for width, text in zip(widths, formatted[1:], strict=True):
            out.append(digits[:width])
            out.append(text)
        return "".join(out)

    return render


def _simple(field: Callable[[TunnelRecord], str]) -> Callable[[str | None], Callable[[TunnelRecord], str]]:
    def build(argument: str | None) -> Callable[[TunnelRecord], str]:
        if argument is not None:
            raise FormatError("takes no argument")
        return field

    return build


_HOSTNAME = socket.gethostname()

_COMMANDS: dict[str, Callable[[str | None], Callable[[TunnelRecord], str]]] = {
    "START_TIME": lambda argument: _start_time(argument or DEFAULT_START_TIME_FORMAT),
    "RESPONSE_CODE": _simple(lambda r: str(r.response_code)),
    "RESPONSE_FLAGS": _simple(lambda r: RESPONSE_FLAGS.get(r.reason, "-")),
    "CONNECTION_TERMINATION_DETAILS": _simple(lambda r: r.reason),
    "BYTES_RECEIVED": _simple(lambda r: str(r.bytes_received)),
    "BYTES_SENT": _simple(lambda r: str(r.bytes_sent)),
    "DURATION": _simple(lambda r: str(int(r.duration * 1000))),
    "DOWNSTREAM_REMOTE_ADDRESS": _simple(lambda r: _address(r.downstream_remote)),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _simple(lambda r: _host(r.downstream_remote)),
    "DOWNSTREAM_REMOTE_PORT": _simple(lambda r: _port(r.downstream_remote)),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _simple(lambda r: _address(r.downstream_remote)),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": _simple(lambda r: _host(r.downstream_remote)),
    "DOWNSTREAM_LOCAL_ADDRESS": _simple(lambda r: _address(r.downstream_local)),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _simple(lambda r: _host(r.downstream_local)),
    "DOWNSTREAM_LOCAL_PORT": _simple(lambda r: _port(r.downstream_local)),
    "UPSTREAM_HOST": _simple(lambda r: _address(r.upstream_host)),
    "UPSTREAM_REMOTE_ADDRESS": _simple(lambda r: _address(r.upstream_host)),
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _simple(lambda r: _host(r.upstream_host)),
    "UPSTREAM_CLUSTER": _simple(lambda r: r.upstream_cluster),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _simple(lambda r: "-"),
    "PROTOCOL": _simple(lambda r: "-"),
    "HOSTNAME": _simple(lambda r: _HOSTNAME),
}

# %COMMAND%, %COMMAND(argument)%, either with :N (truncate); or %% (a percent sign).
_TOKEN = re.compile(r"%%|%([A-Z_]+)(?:\(([^)]*)\))?(?::(\d+))?%")


def compile_format(fmt: str) -> Callable[[TunnelRecord], str]:
    """A function writing one access-log line per record. Raises FormatError for what it cannot write."""
    parts: list[str | Callable[[TunnelRecord], str]] = []
    position = 0
    for match in _TOKEN.finditer(fmt):
        literal = fmt[position : match.start()]
        if "%" in literal:
            raise FormatError(f"unterminated or malformed command at {literal[literal.index('%') :]!r}")
        parts.append(literal)
        position = match.end()
        if match.group(0) == "%%":
            parts.append("%")
            continue
        command, argument, limit = match.group(1), match.group(2), match.group(3)
        build = _COMMANDS.get(command)
        if build is None:
            raise FormatError(f"unknown or unsupported command %{command}%")
        try:
            field = build(argument)
        except FormatError as error:
            raise FormatError(f"%{command}% {error}") from None
        if limit is not None:
            parts.append(_truncated(field, int(limit)))
        else:
            parts.append(field)
    tail = fmt[position:]
    if "%" in tail:
        raise FormatError(f"unterminated or malformed command at {tail[tail.index('%') :]!r}")
    parts.append(tail)
    # One %-template: literals (percent signs doubled) around a %s per field; cheaper than joining parts.
    template = "".join(p.replace("%", "%%") if isinstance(p, str) else "%s" for p in parts)
    fields = tuple(p for p in parts if not isinstance(p, str))

    def render(record: TunnelRecord) -> str:
        return template % tuple([field(record) for field in fields])

    return render


def _truncated(field: Callable[[TunnelRecord], str], limit: int) -> Callable[[TunnelRecord], str]:
    return lambda record: field(record)[:limit]
