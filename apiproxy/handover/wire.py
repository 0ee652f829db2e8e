"""The handover's four messages, sans-I/O: each is one JSON object in one SOCK_SEQPACKET record.

  taker -> giver   hello     {"handover": 1, "type": "hello", "pid": 4242}
  giver -> taker   offer     {"handover": 1, "type": "offer", "pid": 17, "sockets": ["listener"]}  + the
                             descriptors, one per name, in SCM_RIGHTS
  taker -> giver   verdict   {"handover": 1, "type": "verdict", "taken": true}  (or false, with "why")
  giver -> taker   released  {"handover": 1, "type": "released"}

A record carries one message whole (no framing to get wrong), and a message with a field missing, of the
wrong type, or from another protocol version is a `WireError` naming what was wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

VERSION = 1
# A record is read whole into a buffer of this size; the messages are tens of bytes.
MAX_RECORD = 4096
# The sockets an offer may carry, by name: the tunnel listener (VIP:443).
LISTENER = "listener"
# Descriptors read with an offer at most; more than it names make the offer invalid (and are closed).
MAX_DESCRIPTORS = 4


class WireError(ValueError):
    """A record that is not the message expected (the peer's fault, or another version's)."""


@dataclass(frozen=True, slots=True)
class Hello:
    pid: int


@dataclass(frozen=True, slots=True)
class Offer:
    pid: int
    sockets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    taken: bool
    why: str = ""


@dataclass(frozen=True, slots=True)
class Released:
    pass


Message = Hello | Offer | Verdict | Released
M = TypeVar("M", Hello, Offer, Verdict, Released)

_TYPES: dict[type[Any], str] = {Hello: "hello", Offer: "offer", Verdict: "verdict", Released: "released"}


def encode(message: Message) -> bytes:
    body: dict[str, Any] = {"handover": VERSION, "type": _TYPES[type(message)]}
    if isinstance(message, Hello | Offer):
        body["pid"] = message.pid
    if isinstance(message, Offer):
        body["sockets"] = list(message.sockets)
    if isinstance(message, Verdict):
        body["taken"] = message.taken
        if message.why:
            body["why"] = message.why
    return json.dumps(body, separators=(",", ":")).encode()


def decode(record: bytes, expected: type[M]) -> M:
    """The message of type `expected` in `record`, or WireError saying why it is not."""
    name = _TYPES[expected]
    if not record:
        raise WireError(f"the peer closed the connection instead of sending its {name}")
    if len(record) >= MAX_RECORD:
        raise WireError(f"a {name} of {len(record)} bytes or more (at most {MAX_RECORD - 1})")
    try:
        body = json.loads(record)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError(f"expected a {name} as a JSON object, got {record[:80]!r}") from None
    if not isinstance(body, dict):
        raise WireError(f"expected a {name} as a JSON object, got {record[:80]!r}")
    if body.get("handover") != VERSION:
        raise WireError(f"handover protocol version {body.get('handover')!r}; this process speaks {VERSION}")
    if body.get("type") != name:
        raise WireError(f"expected a {name}, got {body.get('type')!r}")
    message = _FIELDS[expected](body)
    assert isinstance(message, expected)
    return message


def _offer(body: dict[str, Any]) -> Offer:
    sockets = body.get("sockets")
    if not isinstance(sockets, list) or not all(isinstance(s, str) for s in sockets):
        raise WireError(f"an offer's sockets must be a list of names, got {sockets!r}")
    return Offer(_pid(body), tuple(sockets))


def _verdict(body: dict[str, Any]) -> Verdict:
    taken, why = body.get("taken"), body.get("why", "")
    if not isinstance(taken, bool) or not isinstance(why, str):
        raise WireError(f"a verdict needs taken (true/false) and an optional why, got {body!r}")
    return Verdict(taken, why[:200])


def _pid(body: dict[str, Any]) -> int:
    pid = body.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        raise WireError(f"expected a process id, got {pid!r}")
    return pid


# Each message's fields, read from its JSON object.
_FIELDS: dict[type[Any], Callable[[dict[str, Any]], Message]] = {
    Hello: lambda body: Hello(_pid(body)),
    Offer: _offer,
    Verdict: _verdict,
    Released: lambda body: Released(),
}
