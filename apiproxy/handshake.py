"""The HTTP/1.1 CONNECT handshake with the seed gateway, sans-I/O.

`build_connect_request` writes the request once per configuration (it is the same for every tunnel).
`ConnectHandshake` reads the gateway's answer: feed it bytes as they arrive; it returns a `ConnectAnswer`
once the final response head is complete, or raises `HandshakeError` with a reason.

h11 is the parser of record. A fresh `h11.Connection` per tunnel costs tens of microseconds, a large
part of a tunnel's CPU, yet a gateway answers the same few heads over and over (Envoy's only change
per second is its `date` header). So a head h11 has parsed once is remembered: the next time the same
bytes arrive, the answer is a dict lookup. Anything new, split oddly, informational (1xx) or odd goes
through h11.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11

from .reasons import Reason

# Envoy's default limit on a response head is 60 KiB; a CONNECT answer has no business being large.
DEFAULT_MAX_HEAD_SIZE = 16 * 1024
_CACHE_MAX_ENTRIES = 256
_CACHE_MAX_HEAD = 1024


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__
class ConnectAnswer:
    status: int
    reason: bytes
    # Bytes after the head. For a 2xx they are tunnel data and must reach the client.
    tunnel_data: bytes

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


class HandshakeError(Exception):
    """The gateway broke the protocol. `reason` names the failure, `str()` says what happened."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def build_connect_request(
    authority: str, headers: tuple[tuple[str, str], ...] | list[tuple[str, str]]
) -> bytes:
    """The request bytes: `CONNECT authority HTTP/1.1`, `Host: authority`, then `headers` in order."""
    request = h11.Request(method="CONNECT", target=authority, headers=[("Host", authority), *headers])
    return _new_client(request, DEFAULT_MAX_HEAD_SIZE)[1]


def _new_client(request: h11.Request, max_head_size: int) -> tuple[h11.Connection, bytes]:
    client = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head_size)
    data = client.send(request) or b""
    client.send(h11.EndOfMessage())
    return client, data


# Any CONNECT request puts an h11 client in the state an answer is read in; the gateway's answer does not
# depend on which request h11 believes it sent (only on the method, CONNECT).
_PROTOTYPE_REQUEST = h11.Request(
    method="CONNECT", target="apiproxy.invalid:443", headers=[("Host", "apiproxy.invalid:443")]
)

# head bytes -> (status, reason), only for final answers h11 has parsed from the very first byte.
_known_heads: dict[bytes, tuple[int, bytes]] = {}


def known_answer(data: bytes) -> tuple[int, bytes, int] | None:
    """(status, reason phrase, head length) if `data`, the first bytes of an answer, begins with a whole
    head h11 has read before; else None (then a `ConnectHandshake` reads it). The proxy's path for most
    tunnels: no parser object and no answer object per tunnel."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    known = _known_heads.get(data[: end + 4])
    return None if known is None else (known[0], known[1], end + 4)


class ConnectHandshake:
    """Reads one CONNECT answer. Not reusable."""

    __slots__ = ("_client", "_fed", "_head", "_informational", "_max_head_size")

    def __init__(self, max_head_size: int = DEFAULT_MAX_HEAD_SIZE) -> None:
        # The first bytes received, as far as a head worth caching reaches: the key of the head cache.
        self._head = b""
        self._fed = 0  # bytes given to h11 so far
        self._client: h11.Connection | None = None
        self._informational = False
        self._max_head_size = max_head_size

    def feed(self, data: bytes) -> ConnectAnswer | None:
        """Bytes from the gateway. Returns the answer once the head is complete, else None. Bytes behind a
        2xx head, however many arrived with it, are tunnel data: only the head is bounded."""
        if self._client is None:
            known = known_answer(data)
            if known is not None:
                return ConnectAnswer(known[0], known[1], data[known[2] :])
            self._client = _new_client(_PROTOTYPE_REQUEST, self._max_head_size)[0]
        if len(self._head) <= _CACHE_MAX_HEAD:
            self._head += data[: _CACHE_MAX_HEAD + 1 - len(self._head)]
        self._fed += len(data)
        return self._parse(data)

    def feed_eof(self) -> None:
        """The gateway closed before a complete answer: always an error."""
        raise HandshakeError(
            Reason.CLOSED_BEFORE_ANSWER,
            f"gateway closed the connection after {self._fed} bytes, before a complete CONNECT answer",
        )

    def _parse(self, data: bytes) -> ConnectAnswer | None:
        client = self._client
        assert client is not None
        client.receive_data(data)
        try:
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    if self._fed > self._max_head_size:
                        raise HandshakeError(
                            Reason.ANSWER_TOO_LARGE,
                            f"gateway answer head exceeds {self._max_head_size} bytes",
                        )
                    return None
                if isinstance(event, h11.InformationalResponse):
                    self._informational = True
                    continue
                if isinstance(event, h11.Response):
                    return self._answer(client, event)
                raise HandshakeError(Reason.MALFORMED_ANSWER, f"unexpected answer from gateway: {event!r}")
        except h11.RemoteProtocolError as error:
            # h11 reports an oversized head with the status hint 431.
            reason = Reason.ANSWER_TOO_LARGE if error.error_status_hint == 431 else Reason.MALFORMED_ANSWER
            raise HandshakeError(reason, f"gateway sent an invalid CONNECT answer: {error}") from None

    def _answer(self, client: h11.Connection, response: h11.Response) -> ConnectAnswer:
        status, reason = response.status_code, bytes(response.reason)
        tunnel_data = client.trailing_data[0] if client.their_state is h11.SWITCHED_PROTOCOL else b""
        self._remember(status, reason, self._fed - len(tunnel_data))
        return ConnectAnswer(status, reason, tunnel_data)

    def _remember(self, status: int, reason: bytes, head_size: int) -> None:
        """Cache a head h11 accepted, when the fast path would find exactly the same bytes again."""
        if self._informational or not 0 < head_size <= _CACHE_MAX_HEAD:
            return
        head = self._head[:head_size]
        # Only heads whose lines all end in CRLF: then the first CRLFCRLF, which the fast path looks for,
        # is the end of the head h11 read.
        if head.count(b"\n") != head.count(b"\r\n") or head.find(b"\r\n\r\n") != head_size - 4:
            return
        if (
            200 <= status < 300
            and self._client is not None
            and self._client.their_state is not h11.SWITCHED_PROTOCOL
        ):
            return
        if len(_known_heads) >= _CACHE_MAX_ENTRIES:
            _known_heads.clear()
        _known_heads[head] = (status, reason)
