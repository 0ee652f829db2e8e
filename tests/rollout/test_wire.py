"""The handover's messages without sockets: each round-trips, and every malformed record is refused with a
line that says what was wrong (a peer of another version, a truncated or hostile record)."""

from __future__ import annotations

import pytest

from apiproxy.config import ConfigError
from apiproxy.handover import MAX_PATH_BYTES, parse_socket_path, wire
from apiproxy.handover.wire import Hello, Offer, Released, Verdict, WireError, decode, encode


@pytest.mark.parametrize(
    "message",
    [
        Hello(4242),
        Offer(17, ("listener",)),
        Offer(17, ()),
        Verdict(True),
        Verdict(False, "another port"),
        Released(),
    ],
)
def test_every_message_round_trips(message: wire.Message) -> None:
    record = encode(message)
    assert len(record) < wire.MAX_RECORD
    assert decode(record, type(message)) == message


def test_the_record_is_the_documented_json() -> None:
    assert encode(Hello(4242)) == b'{"handover":1,"type":"hello","pid":4242}'
    assert encode(Verdict(False, "no")) == b'{"handover":1,"type":"verdict","taken":false,"why":"no"}'


@pytest.mark.parametrize(
    ("record", "expected", "error"),
    [
        (b"", Hello, "closed the connection instead of sending its hello"),
        (b"\xff\xfe", Hello, "expected a hello as a JSON object"),
        (b"[1, 2]", Offer, "expected a offer as a JSON object"),
        (
            b'{"handover":2,"type":"hello","pid":1}',
            Hello,
            "handover protocol version 2; this process speaks 1",
        ),
        (b'{"type":"hello","pid":1}', Hello, "handover protocol version None"),
        (b'{"handover":1,"type":"offer","pid":1,"sockets":[]}', Hello, "expected a hello, got 'offer'"),
        (b'{"handover":1,"type":"hello","pid":"1"}', Hello, "expected a process id, got '1'"),
        (b'{"handover":1,"type":"hello","pid":true}', Hello, "expected a process id, got True"),
        (b'{"handover":1,"type":"hello","pid":-3}', Hello, "expected a process id, got -3"),
        (b'{"handover":1,"type":"offer","pid":1,"sockets":"listener"}', Offer, "must be a list of names"),
        (b'{"handover":1,"type":"offer","pid":1,"sockets":[3]}', Offer, "must be a list of names"),
        (b'{"handover":1,"type":"verdict","taken":"yes"}', Verdict, "a verdict needs taken"),
        (b'{"handover":1,"type":"verdict","taken":true,"why":7}', Verdict, "a verdict needs taken"),
        (b"{" + b" " * wire.MAX_RECORD + b"}", Released, "at most 4095"),
    ],
)
def test_a_malformed_record_is_refused_saying_why(
    record: bytes, expected: type[wire.Message], error: str
) -> None:
    with pytest.raises(WireError, match=None) as raised:
        decode(record, expected)
    assert error in str(raised.value)


def test_a_long_why_is_capped() -> None:
    verdict = decode(b'{"handover":1,"type":"verdict","taken":false,"why":"' + b"x" * 1000 + b'"}', Verdict)
    assert verdict == Verdict(False, "x" * 200)


def test_socket_paths() -> None:
    assert parse_socket_path("--handover-socket", " /var/run/apiserver-proxy/handover ") == (
        "/var/run/apiserver-proxy/handover"
    )
    assert parse_socket_path("--handover-socket", "/" + "a" * (MAX_PATH_BYTES - 1)) == "/" + "a" * (
        MAX_PATH_BYTES - 1
    )
    for bad in ("", "  ", "/run/a\0b", "/" + "a" * MAX_PATH_BYTES):
        with pytest.raises(
            ConfigError, match=r"^--handover-socket: expected a file path of at most 99 bytes"
        ):
            parse_socket_path("--handover-socket", bad)
