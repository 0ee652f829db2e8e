"""One tunnel's client end, phase by phase, each phase timed: TCP connect; for a gateway target the CONNECT
request and its answer (read by apiproxy's own sans-I/O handshake); TLS through the tunnel to the API
server; then a request and its answer (first byte, then complete). Any failure becomes a `Failure` that
names its kind (refused, reset, closed, timeout, tls_error, http_503, ...) and the phase it happened in.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import time
from typing import cast

import h11

from apiproxy.handshake import ConnectHandshake, HandshakeError

from .plan import Target

# A stream stops reading (TCP backpressure) when this much received data is not consumed yet.
_READ_LIMIT = 1 << 20

_ERRNO_KINDS = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.EPIPE: "reset",
    errno.ECONNABORTED: "reset",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    # No free local port for one more connection to the same target address.
    errno.EADDRNOTAVAIL: "no_local_port",
    errno.EMFILE: "no_descriptor",
    errno.ENFILE: "no_descriptor",
}


class Failure(Exception):
    """A tunnel, request or probe failed: `kind` is the failure's name in the report, `phase` where."""

    def __init__(self, kind: str, phase: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.phase = phase


class PeerClosed(ConnectionError):
    """The other end closed the connection (a FIN) before the answer was complete."""


def failure_kind(error: BaseException) -> str:
    if isinstance(error, Failure):
        return error.kind
    if isinstance(error, PeerClosed | ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "closed"
    if isinstance(error, ssl.SSLError | ssl.CertificateError):
        return "tls_error"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, HandshakeError):
        return "closed" if error.reason == "closed_before_answer" else "bad_connect_answer"
    if isinstance(error, h11.RemoteProtocolError):
        return "bad_answer"
    if isinstance(error, OSError) and error.errno is not None:
        return _ERRNO_KINDS.get(error.errno, errno.errorcode.get(error.errno, "os_error").lower())
    if isinstance(error, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return "reset"
    return type(error).__name__


def describe(error: BaseException) -> str:
    """What went wrong, in the words of the system where it has some."""
    if isinstance(error, TimeoutError) and not str(error):
        return "no progress within --timeout"
    return str(error) or type(error).__name__


class Stream(asyncio.Protocol):
    """A client connection's receiving end, as a Protocol (cheaper than asyncio streams): received bytes
    wait in a list until read; `arrived_at` is when the oldest unread bytes came in."""

    __slots__ = ("_chunks", "_eof", "_error", "_paused", "_read_waiter", "_size", "_write_waiter",
                 "arrived_at", "closed", "connected_at", "transport")  # fmt: skip

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.connected_at = 0.0
        self.arrived_at = 0.0
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connected_at = time.monotonic()
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast, not isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._chunks:
            self.arrived_at = time.monotonic()
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _READ_LIMIT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake_reader()
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_waiter = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_result(None)
        self._write_waiter = None

    def _wake_reader(self) -> None:
        if self._read_waiter is not None and not self._read_waiter.done():
            self._read_waiter.set_result(None)

    async def read(self) -> bytes:
        """The bytes received so far (waiting for some); PeerClosed (or the connection's error) at the end."""
        while not self._chunks:
            if self._eof:
                raise self._error if self._error is not None else PeerClosed("the peer closed the connection")
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def unread(self, data: bytes) -> None:
        """Bytes that came with an earlier read and belong to the next one (after a CONNECT answer)."""
        if data:
            self.arrived_at = time.monotonic()
            self._chunks.insert(0, data)
            self._size += len(data)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise self._error if self._error is not None else PeerClosed("the connection is closed")
        self.transport.write(data)

    async def drain(self) -> None:
        if self._write_waiter is not None:
            await self._write_waiter
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Conversation:
    """The request a tunnel sends, and when its answer is complete: an HTTP/1.1 response as h11 reads it,
    or, when the backend is an echo server (the answer does not start with `HTTP/`), once as many bytes
    came back as were sent. One exchange at a time per tunnel (no pipelining)."""

    __slots__ = ("_echo_left", "_head", "_http", "_mode", "_request", "data", "status")

    def __init__(self, request: h11.Request) -> None:
        self._request = request
        self.data = _client(request)[1]
        self._http: h11.Connection | None = None
        self._mode = ""  # "http" or "echo" once the answer's first bytes tell
        self._echo_left = 0
        self._head = b""
        self.status: int | None = None

    def begin(self) -> bytes:
        """The request's bytes; resets the answer state."""
        self._http = None
        self._mode = ""
        self._echo_left = len(self.data)
        self._head = b""
        self.status = None
        return self.data

    def feed(self, data: bytes) -> bool:
        """Answer bytes; True once the answer is complete."""
        if not self._mode:
            self._head += data
            if len(self._head) < 5 and b"HTTP/".startswith(self._head):
                return False  # too few bytes to tell HTTP from an echo yet
            data, self._head = self._head, b""
            if data.startswith(b"HTTP/"):
                self._mode = "http"
                self._http = _client(self._request)[0]
            else:
                self._mode = "echo"
        if self._http is None:
            self._echo_left -= len(data)
            return self._echo_left <= 0
        self._http.receive_data(data)
        return self._events()

    def feed_eof(self) -> bool:
        """The peer closed: True if that completes the answer (an HTTP body delimited by the close)."""
        if self._http is None:
            return False
        self._http.receive_data(b"")
        return self._events()

    def _events(self) -> bool:
        assert self._http is not None
        while True:
            event = self._http.next_event()
            if event is h11.NEED_DATA:
                return False
            if isinstance(event, h11.Response):
                self.status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                return True
            elif isinstance(event, h11.ConnectionClosed):
                return False


def _client(request: h11.Request) -> tuple[h11.Connection, bytes]:
    """An h11 client that has sent `request` (so it reads the answer), and the request's bytes."""
    connection = h11.Connection(h11.CLIENT)
    data = (connection.send(request) or b"") + (connection.send(h11.EndOfMessage()) or b"")
    return connection, data


class Setup:
    """The timed phases of one tunnel's setup (seconds; None for a phase the target does not have)."""

    __slots__ = ("answered_at", "connect", "connect_answer", "first_byte", "phase", "status", "tls")

    def __init__(self) -> None:
        self.phase = "connect"
        self.connect = 0.0
        self.connect_answer: float | None = None
        self.tls: float | None = None
        self.first_byte = 0.0
        self.answered_at = 0.0  # when the first byte of the answer arrived (monotonic)
        self.status: int | None = None


async def exchange(stream: Stream, conversation: Conversation) -> tuple[float, float]:
    """Sends the request, reads the whole answer. Returns (sent at, first byte at). An HTTP status of 500
    or more is a Failure of kind http_<status>."""
    sent_at = time.monotonic()
    stream.write(conversation.begin())
    first_at = 0.0
    while True:
        try:
            data = await stream.read()
        except PeerClosed:
            if conversation.feed_eof():
                break
            raise
        if not first_at:
            first_at = stream.arrived_at
        if conversation.feed(data):
            break
    if conversation.status is not None and conversation.status >= 500:
        raise Failure(
            f"http_{conversation.status}", "first_byte", f"the answer's status is {conversation.status}"
        )
    return sent_at, first_at


async def open_tunnel(target: Target, tls: ssl.SSLContext | None, conversation: Conversation,
                      connect_request: bytes | None, timeout: float) -> tuple[Stream, Setup]:  # fmt: skip
    """Sets a tunnel up through its first request's answer, within `timeout`. Raises Failure."""
    setup = Setup()
    stream: Stream | None = None
    try:
        async with asyncio.timeout(timeout):
            began = time.monotonic()
            _, stream = await asyncio.get_running_loop().create_connection(
                Stream, target.address, target.port
            )
            setup.connect = stream.connected_at - began
            if connect_request is not None:
                setup.phase = "connect_answer"
                await _connect_answer(stream, connect_request, setup, tls is not None)
            if tls is not None:
                setup.phase = "tls"
                began = time.monotonic()
                transport = await asyncio.get_running_loop().start_tls(
                    cast(asyncio.Transport, stream.transport), stream, tls, server_hostname=target.sni
                )
                stream.transport = cast(asyncio.Transport, transport)
                setup.tls = time.monotonic() - began
            setup.phase = "first_byte"
            sent_at, setup.answered_at = await exchange(stream, conversation)
            setup.first_byte = setup.answered_at - sent_at
            setup.status = conversation.status
            return stream, setup
    except BaseException as error:
        if stream is not None:
            stream.close()
        if isinstance(error, Failure) or not isinstance(error, Exception):
            raise  # a Failure already, or the run is being cancelled
        raise Failure(failure_kind(error), setup.phase, describe(error)) from None


async def _connect_answer(stream: Stream, request: bytes, setup: Setup, tls_follows: bool) -> None:
    began = time.monotonic()
    stream.write(request)
    handshake = ConnectHandshake()
    while True:
        try:
            data = await stream.read()
        except PeerClosed:
            handshake.feed_eof()  # raises HandshakeError: closed before a complete answer
            raise
        answer = handshake.feed(data)
        if answer is not None:
            break
    setup.connect_answer = stream.arrived_at - began
    if not answer.accepted:
        reason = answer.reason.decode("ascii", "replace")
        raise Failure(
            f"http_{answer.status}", "connect_answer", f"the gateway answered {answer.status} {reason}"
        )
    if answer.tunnel_data and tls_follows:
        raise Failure("bad_connect_answer", "connect_answer",
                      f"{len(answer.tunnel_data)} bytes from the tunnel before the TLS ClientHello")  # fmt: skip
    stream.unread(answer.tunnel_data)
