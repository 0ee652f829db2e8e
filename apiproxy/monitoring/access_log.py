"""The access log: one line per closed tunnel, written from an Envoy format string, sans-I/O.

`compile_format` turns a format such as Gardener's
  [%START_TIME%] %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% rx %BYTES_SENT% tx %DURATION%ms ...
into a function writing the lines of a batch of `TunnelRecord`s. It knows Envoy's commands that make sense
for a TCP tunnel (`%COMMAND%`, `%COMMAND(arg)%`, `%COMMAND:N%` truncates to N characters, `%%` is a percent
sign); an unknown command is refused at start, as Envoy refuses it. A missing value prints `-`, as in Envoy.

RESPONSE_CODE is the gateway's answer to the CONNECT (200, 301, 503), 0 when it gave none. (Envoy's
tcp_proxy prints 0 here even for a tunnel the gateway accepted; the CONNECT status is what an operator
reading the log needs.) RESPONSE_FLAGS are Envoy's short flags for the same failures (UF,URX: no usable
gateway connection; UH: no gateway address; UT: no CONNECT answer in time; UC: the gateway hung up).

The event loop only builds a record, a plain tuple; the access log's thread (`line_writer`) writes a
batch of them at a time, column by column: each command turns one field of every record into text in one
pass (most in C: `zip`, `map`), and one %-template per line joins them. Per record and command that
avoids a Python call, which is most of what a line used to cost (~35,000 instructions per line with a
function per field; `python -m benchmarks.monitoring_cost --callgrind`).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from operator import itemgetter, mul
from typing import Any, NamedTuple

from ..addresses import bracket
from ..reasons import RESPONSE_FLAGS, Reason

# (host, port), or a socket address with more fields (IPv6: flow info and scope id), of which the first two.
Address = tuple[Any, ...]


class TunnelRecord(NamedTuple):
    """What the access log knows of one closed tunnel. The event loop hands over plain tuples in this
    order (`Record`): a named tuple costs a Python call to build."""

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


Record = tuple[float, float, int, Reason, int, int, Address | None, Address | None, Address | None, str]
_FIELD = {name: index for index, name in enumerate(TunnelRecord._fields)}

# One value per record of a batch, from (the batch's fields, each a tuple over the records; the batch's
# size); written with %s (an int or a Reason needs no str() here).
Column = Callable[[Sequence[Sequence[Any]], int], Iterable[object]]
# What a command writes: a template fragment with a %s per column.
Piece = tuple[str, tuple[Column, ...]]

DEFAULT_START_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%3fZ"


class FormatError(ValueError):
    """The format string uses something Envoy's TCP access log does not have. `str()` says what."""


_HOST, _PORT = itemgetter(0), itemgetter(1)
_PREFIXES_KEPT = 4096  # hosts whose `host:` text is kept (a node's pods, a gateway's few addresses)


def _field(name: str) -> Column:
    """The field as it is."""
    index = _FIELD[name]
    return lambda fields, _: fields[index]


def _address(name: str) -> Piece:
    """`host:port`, IPv6 in brackets, `-` for none: in two columns, `host:` and the port, as each host's text
    is made once (clients reconnect from the few addresses of a node's pods; the gateway has one or two),
    where `host_port` per record was a third of a line's cost."""
    index = _FIELD[name]
    prefixes: dict[str, str] = {}

    def prefix(host: str) -> str:
        return f"{bracket(host)}:"

    def hosts(fields: Sequence[Sequence[Any]], _: int) -> Iterable[str]:
        values = fields[index]
        if None in values:
            return ["-" if value is None else prefix(value[0]) for value in values]
        names = list(map(_HOST, values))
        missing = set(names).difference(prefixes)
        if missing:
            if len(prefixes) + len(missing) > _PREFIXES_KEPT:
                prefixes.clear()
                missing = set(names)
            prefixes.update((host, prefix(host)) for host in missing)
        return map(prefixes.__getitem__, names)

    def ports(fields: Sequence[Sequence[Any]], _: int) -> Iterable[object]:
        values = fields[index]
        if None in values:
            return ["" if value is None else value[1] for value in values]
        return map(_PORT, values)

    return "%s%s", (hosts, ports)


def _hosts(name: str) -> Column:
    index = _FIELD[name]
    return lambda fields, _: ["-" if value is None else value[0] for value in fields[index]]


def _ports(name: str) -> Column:
    index = _FIELD[name]
    return lambda fields, _: ["-" if value is None else value[1] for value in fields[index]]


def _constant(text: str) -> Column:
    return lambda _, count: repeat(text, count)


def _milliseconds(fields: Sequence[Sequence[Any]], _: int) -> Iterable[int]:
    return map(int, map(mul, fields[_FIELD["duration"]], repeat(1000)))


def _flags(fields: Sequence[Sequence[Any]], _: int) -> Iterable[str]:
    return map(RESPONSE_FLAGS.get, fields[_FIELD["reason"]], repeat("-"))


_FRACTION = re.compile(r"%([1-9]?)f")


def _start_time(pattern: str) -> Column:
    """Envoy's START_TIME: strftime in UTC, plus %f / %Nf (fractional seconds, N digits, cut, not rounded)
    and %s. The strftime pieces are made once per second (tunnels end in bursts); the common pattern, one
    fraction of up to 3 digits (Envoy's default, `%3f`), takes its digits from a table."""
    pieces = _FRACTION.split(pattern)
    formats, widths = pieces[0::2], [int(w or 9) for w in pieces[1::2]]
    index = _FIELD["start_time"]
    last: list[Any] = [None, []]  # the second last written and its strftime pieces

    def texts_of(second: int) -> list[str]:
        if last[0] != second:
            moment = time.gmtime(second)
            last[:] = [second, [time.strftime(f.replace("%s", str(second)), moment) for f in formats]]
        texts: list[str] = last[1]
        return texts

    def seconds_and_nanos(start: float) -> tuple[int, int]:
        second = int(start)
        nanos = round((start - second) * 1e9)
        return (second, nanos) if nanos < 1_000_000_000 else (second + 1, nanos - 1_000_000_000)

    if len(widths) != 1:

        def general(fields: Sequence[Sequence[Any]], _: int) -> list[str]:
            out = []
            for start in fields[index]:
                second, nanos = seconds_and_nanos(start)
                texts = texts_of(second)
                digits = f"{nanos:09d}"
                line = [texts[0]]
                for width, text in zip(widths, texts[1:], strict=True):
                    line.append(digits[:width])
                    line.append(text)
                out.append("".join(line))
            return out

        return general

    width = widths[0]
    divisor = 10 ** (9 - width)
    table = [f"{n:0{width}d}" for n in range(10**width)] if width <= 3 else None

    def one_fraction(fields: Sequence[Sequence[Any]], _: int) -> list[str]:
        out = []
        seen = head = tail = None  # the whole seconds (a float) whose pieces are at hand
        for start in fields[index]:
            whole = start // 1.0  # a float: int() is a costlier call, made only for a new second
            nanos = round((start - whole) * 1e9)
            if whole != seen or nanos >= 1_000_000_000:
                second, nanos = seconds_and_nanos(start)
                head, tail = texts_of(second)
                seen = whole if second == whole else None  # rounded up into the next second: not for others
            digits = table[nanos // divisor] if table is not None else f"{nanos // divisor:0{width}d}"
            out.append(f"{head}{digits}{tail}")
        return out

    return one_fraction


def _simple(what: Column | Piece) -> Callable[[str | None], Piece]:
    piece = what if isinstance(what, tuple) else ("%s", (what,))

    def build(argument: str | None) -> Piece:
        if argument is not None:
            raise FormatError("takes no argument")
        return piece

    return build


_COMMANDS: dict[str, Callable[[str | None], Piece]] = {
    "START_TIME": lambda argument: ("%s", (_start_time(argument or DEFAULT_START_TIME_FORMAT),)),
    "RESPONSE_CODE": _simple(_field("response_code")),
    "RESPONSE_FLAGS": _simple(_flags),
    "CONNECTION_TERMINATION_DETAILS": _simple(_field("reason")),
    "BYTES_RECEIVED": _simple(_field("bytes_received")),
    "BYTES_SENT": _simple(_field("bytes_sent")),
    "DURATION": _simple(_milliseconds),
    "DOWNSTREAM_REMOTE_ADDRESS": _simple(_address("downstream_remote")),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _simple(_hosts("downstream_remote")),
    "DOWNSTREAM_REMOTE_PORT": _simple(_ports("downstream_remote")),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": _simple(_address("downstream_remote")),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": _simple(_hosts("downstream_remote")),
    "DOWNSTREAM_LOCAL_ADDRESS": _simple(_address("downstream_local")),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _simple(_hosts("downstream_local")),
    "DOWNSTREAM_LOCAL_PORT": _simple(_ports("downstream_local")),
    "UPSTREAM_HOST": _simple(_address("upstream_host")),
    "UPSTREAM_REMOTE_ADDRESS": _simple(_address("upstream_host")),
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _simple(_hosts("upstream_host")),
    "UPSTREAM_CLUSTER": _simple(_field("upstream_cluster")),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _simple(_constant("-")),
    "PROTOCOL": _simple(_constant("-")),
    "HOSTNAME": _simple(_constant(socket.gethostname())),
}

# %COMMAND%, %COMMAND(argument)%, either with :N (truncate); or %% (a percent sign).
_TOKEN = re.compile(r"%%|%([A-Z_]+)(?:\(([^)]*)\))?(?::(\d+))?%")


def compile_format(fmt: str) -> Callable[[Sequence[Record]], str]:
    """A function writing the access-log lines (each ending as `fmt` ends) of a batch of records. Raises
    FormatError for what it cannot write."""
    parts: list[str | Piece] = []
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
            piece = build(argument)
        except FormatError as error:
            raise FormatError(f"%{command}% {error}") from None
        parts.append(piece if limit is None else _truncated(piece, int(limit)))
    tail = fmt[position:]
    if "%" in tail:
        raise FormatError(f"unterminated or malformed command at {tail[tail.index('%') :]!r}")
    parts.append(tail)
    # One %-template per line: literals (percent signs doubled) around each command's fragment.
    template = "".join(p.replace("%", "%%") if isinstance(p, str) else p[0] for p in parts)
    columns = tuple(column for p in parts if not isinstance(p, str) for column in p[1])
    if not columns:
        return lambda records: (template % ()) * len(records)

    def render(records: Sequence[Record]) -> str:
        if not records:
            return ""
        fields = list(zip(*records, strict=True))  # fields[i]: field i of every record
        count = len(records)
        lines = zip(*(column(fields, count) for column in columns), strict=True)
        return "".join(map(template.__mod__, lines))

    return render


def _truncated(piece: Piece, limit: int) -> Piece:
    fragment, columns = piece

    def column(fields: Sequence[Sequence[Any]], count: int) -> list[str]:
        values = zip(*(column(fields, count) for column in columns), strict=True)
        return [(fragment % value)[:limit] for value in values]

    return "%s", (column,)
