"""The monitoring port (16910): `/metrics` and `/ready`, everything else 404 — served to a hostile network.

The port is on the node's network (hostNetwork, hostPort): every pod can reach it, and the kubelet's probes
(1 s timeout; failed liveness restarts the proxy, which cuts every tunnel on the node) must be answered
whatever those pods send. So:

- One thread of its own runs a selector: it accepts, reads request heads, answers and closes. Not the
  proxy's event loop: a loop busy with tunnels, or a CPU-throttled pod, must not fail the probes (Python's
  5 ms switch interval bounds how long the loop keeps this thread off the interpreter). `/ready` is
  answered there, from a callable that only reads state. `/metrics` is rendered on a second thread, one
  rendering at a time and at most one per RENDER_INTERVAL, each serving every scrape that waited for it: a
  broken or slow exposition cannot hold up a probe, and a flood of scrapes costs one rendering at a time.
- Every connection has one deadline, DEADLINE after accept, for all of it (head, answer, close): a client
  that trickles or sends nothing is dropped at it, however it paces its bytes.
- Slots: loopback sources (the kubelet, once its probes say `host: 127.0.0.1`) have LOOPBACK_SLOTS that
  no other source can take; the rest share SHARED_SLOTS; no source holds more than PER_SOURCE. When a
  pool is full, its oldest connection that is still waiting for a head (or lingering after its answer)
  makes room: a real client sends its head at once, so a crowd of slow connections cannot lock anyone out.
- A request is one head of at most HEAD_LIMIT bytes (431 beyond), GET or HEAD (405), without a body
  (400: a body is never read, let alone as a request), answered with `Connection: close`. h11 parses the
  head, as it parses the gateway's answer in handshake.py; the proxy imports it anyway, where
  `http.server` would bring `email.*`, `socketserver` and more.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import re
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11

from ..addresses import peer

log = logging.getLogger(__name__)

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_TEXT = "text/plain; charset=utf-8"

# Returns None when ready, else a one-line reason.
Readiness = Callable[[], str | None]
Exposition = Callable[[], bytes]

DEADLINE = 2.0  # s from accept to close: twice the kubelet's probe timeout
HEAD_LIMIT = 8 * 1024  # bytes of request head, the final blank line included
PER_SOURCE = 8  # connections at once from one address
SHARED_SLOTS = 64  # connections at once from all non-loopback addresses
LOOPBACK_SLOTS = 16  # connections at once from loopback addresses, which nothing else can take
RENDER_INTERVAL = 0.1  # s: /metrics renderings start at least this far apart
DRAIN_LIMIT = 64 * 1024  # bytes read and dropped after an answer, so that closing does not reset it
ACCEPT_BATCH = 16  # accepts per wake-up, so that heads already read are answered between bursts
ACCEPT_PAUSE = 0.1  # s without accepting after the process ran out of descriptors
REPORT_INTERVAL = 60.0  # s between log lines about refused, evicted and timed-out connections

_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}  # fmt: skip
_HEAD_END = re.compile(rb"\n\r?\n")  # as h11 finds it: CRLF CRLF, or bare LFs
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and keeps no state


class BindError(Exception):
    def __init__(self, address: tuple[str, int], error: OSError) -> None:
        super().__init__(f"cannot listen on {address[0]}:{address[1]}: {error.strerror or error}")
        self.address = address
        self.error = error


# --- the request, sans I/O ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    head_only: bool  # HEAD: the answer's head without its body
    path: str  # the target without its query


def head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """Where the request head in `buffer` ends (just past its blank line), or -1 if it is not complete;
    `start` is how far an earlier call already looked."""
    found = _HEAD_END.search(buffer, max(0, start - 2))
    return -1 if found is None else found.end()


def parse_request(head: bytes) -> Request | int:
    """A complete request head -> the Request, or the status that refuses it."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    parser.receive_data(head)
    try:
        event = parser.next_event()
    except h11.RemoteProtocolError as error:
        return 431 if error.error_status_hint == 431 else 400
    if not isinstance(event, h11.Request):
        return 400
    if event.http_version not in (b"1.0", b"1.1"):
        return 505
    if event.method not in (b"GET", b"HEAD"):
        return 405
    for name, value in event.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return 400
    return Request(event.method == b"HEAD", event.target.split(b"?", 1)[0].decode("ascii", "replace"))


def response_head(status: int, content_type: str, length: int) -> bytes:
    allow = "Allow: GET, HEAD\r\n" if status == 405 else ""
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        f"{allow}Connection: close\r\n\r\n"
    ).encode()


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, and 127/8 mapped into IPv6: sources only this host's network namespace can use
    (the kernel drops them arriving from outside)."""
    return host.startswith(("127.", "::ffff:127.")) or host == "::1"


# --- connections --------------------------------------------------------------------------------------------

READING, RENDERING, WRITING, DRAINING, CLOSED = "reading", "rendering", "writing", "draining", "closed"


class _Connection:
    __slots__ = ("address", "deadline", "drained", "events", "head", "loopback", "out", "phase", "request",
                 "sock", "source")  # fmt: skip

    def __init__(self, sock: socket.socket, address: tuple[Any, ...], deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.source = str(address[0])
        self.loopback = is_loopback(self.source)
        self.deadline = deadline
        self.phase = READING
        self.events = 0  # what the selector watches for it; 0: not registered
        self.head = bytearray()
        self.request: Request | None = None
        self.out: list[memoryview] = []
        self.drained = 0

    @property
    def evictable(self) -> bool:
        """Still without a complete head, or already answered: nothing a real client waits for."""
        return self.phase in (READING, DRAINING)


class _Renderer:
    """Renders /metrics on a thread of its own; see the module's docstring."""

    def __init__(
        self, render: Exposition, deliver: Callable[[list[_Connection], bytes | None], None]
    ) -> None:
        self._render = render
        self._deliver = deliver
        self._waiting: list[_Connection] = []
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="apiproxy-monitoring-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self, connection: _Connection) -> None:
        with self._condition:
            self._waiting.append(connection)
            self._condition.notify()

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        last = -RENDER_INTERVAL
        while True:
            with self._condition:
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                while not self._stopping and (rest := last + RENDER_INTERVAL - time.monotonic()) > 0:
                    self._condition.wait(rest)
                if self._stopping:
                    return
                batch, self._waiting = self._waiting, []
            last = time.monotonic()
            try:
                body: bytes | None = self._render()
            except Exception:
                log.exception("monitoring: rendering /metrics failed")
                body = None
            self._deliver(batch, body)


# What the periodic log line says of each kind of trouble.
_TROUBLE = {
    "refused_source_cap": f"refused (over {PER_SOURCE} from one address)",
    "refused_full": "refused (every slot busy)",
    "refused_no_descriptor": "left waiting (no file descriptor)",
    "evicted": "evicted to make room",
    "deadline": f"dropped at the {DEADLINE:g} s deadline",
    "too_large": f"refused (head over {HEAD_LIMIT} bytes)",
    "bad_request": "refused (malformed, a body, not GET/HEAD)",
    "failed": "failed (the first one's traceback is in the log)",
}


class MonitoringEndpoint:
    """The listening sockets of every address, served by one selector thread (and the /metrics renderer)."""

    def __init__(self, addresses: list[tuple[str, int]], ready: Readiness, metrics: Exposition) -> None:
        self.addresses = addresses
        self.ready = ready
        self.metrics = metrics
        self._listeners: list[socket.socket] = []
        self._selector = selectors.DefaultSelector()
        self._thread: threading.Thread | None = None
        self._renderer = _Renderer(metrics, self._rendered)
        self._wake_r, self._wake_w = socket.socketpair()
        self._rendered_queue: collections.deque[tuple[list[_Connection], bytes | None]] = collections.deque()
        self._stopping = False
        self._pools: dict[bool, dict[_Connection, None]] = {True: {}, False: {}}  # loopback? -> accept order
        self._per_source: collections.Counter[str] = collections.Counter()
        self._accept_paused_until = 0.0
        self._scratch = bytearray(DRAIN_LIMIT)
        self._counts: collections.Counter[str] = collections.Counter()
        self._reported: dict[str, int] = {}
        self._next_report = 0.0

    @property
    def bound(self) -> list[tuple[str, int]]:
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self._listeners]

    def statistics(self) -> dict[str, int]:
        """Connections so far by what became of them: accepted, answered, and each kind of trouble above."""
        return dict(self._counts)

    def start(self) -> None:
        """Bind every address, then serve; BindError (and nothing bound) if one cannot be bound."""
        for address in self.addresses:
            try:
                self._listeners.append(_listen(address))
            except OSError as error:
                self.stop()
                raise BindError(address, error) from None
        self._register_listeners()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._renderer.start()
        self._thread = threading.Thread(target=self._serve, name="apiproxy-monitoring", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close every connection and listening socket and join the threads: call it off the event loop."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(5)  # the thread closes the selector and the connections
            self._thread = None
        else:
            self._selector.close()
        self._renderer.stop()
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        self._wake_r.close()
        self._wake_w.close()

    # --- the selector thread --------------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._selector.select(self._timeout()):
                    if isinstance(key.data, _Connection):
                        self._on_event(key.data, mask)
                    elif key.data is None:
                        self._woken()
                    else:
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                now = time.monotonic()
                self._expire(now)
                if self._accept_paused_until and now >= self._accept_paused_until:
                    self._accept_paused_until = 0.0
                    self._register_listeners()
                if now >= self._next_report:
                    self._report(now)
        except Exception:
            log.exception("monitoring endpoint failed: /ready and /metrics are no longer answered")
        finally:
            for pool in self._pools.values():
                for connection in list(pool):
                    self._close(connection)
            self._selector.close()

    def _timeout(self) -> float | None:
        """Seconds until something is due without an event: a deadline, the end of an accept pause, a report
        of trouble; None for nothing."""
        times = [next(iter(pool)).deadline for pool in self._pools.values() if pool]
        if self._accept_paused_until:
            times.append(self._accept_paused_until)
        if self._unreported():
            times.append(self._next_report)
        return max(0.0, min(times) - time.monotonic()) if times else None

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a wake-up is pending already (buffer full), or stopped
            self._wake_w.send(b"\0")

    def _woken(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._rendered_queue:
            batch, body = self._rendered_queue.popleft()
            for connection in batch:
                if connection.phase != RENDERING:
                    continue  # closed at its deadline meanwhile
                if body is None:
                    self._step(connection, self._answer, 500, b"internal error\n")
                else:
                    self._step(connection, self._answer, 200, body, CONTENT_TYPE_METRICS)

    def _rendered(self, batch: list[_Connection], body: bytes | None) -> None:
        """On the renderer's thread: hand its answer over to the selector thread."""
        self._rendered_queue.append((batch, body))
        self._wake()

    # --- admission ------------------------------------------------------------------------------------------

    def _register_listeners(self) -> None:
        for listener in self._listeners:
            self._selector.register(listener, selectors.EVENT_READ, self._accept)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the connections wait in the backlog; retrying at once would spin.
                    self._count("refused_no_descriptor")
                    if not self._accept_paused_until:
                        for each in self._listeners:
                            self._selector.unregister(each)
                    self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
                else:
                    # accept(2): errors of the network (ENETDOWN, EPROTO, ...) are to be retried like EAGAIN.
                    self._failed(f"accepting on {peer(listener.getsockname())}")
                return
            connection = _Connection(sock, address, time.monotonic() + DEADLINE)
            try:
                self._admit(connection)
            except Exception:
                self._failed(f"admitting {peer(address)}")
                self._close(connection, reset=True)
                sock.close()  # if it never took a slot (a second close does nothing)

    def _admit(self, connection: _Connection) -> None:
        sock = connection.sock
        self._count("accepted")
        if self._per_source[connection.source] >= PER_SOURCE:
            self._refuse(sock, "refused_source_cap")
            return
        pool = self._pools[connection.loopback]
        if len(pool) >= (LOOPBACK_SLOTS if connection.loopback else SHARED_SLOTS):
            victim = next((c for c in pool if c.evictable), None)
            if victim is None:
                self._refuse(sock, "refused_full")
                return
            self._count("evicted")
            self._close(victim, reset=True)
        pool[connection] = None
        self._per_source[connection.source] += 1
        sock.setblocking(False)
        self._watch(connection, selectors.EVENT_READ)
        # A client sends its head right after the handshake: often it is here already.
        self._step(connection, self._read_head)

    def _refuse(self, sock: socket.socket, what: str) -> None:
        self._count(what)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        finally:
            sock.close()

    def _expire(self, now: float) -> None:
        for pool in self._pools.values():
            while pool and (oldest := next(iter(pool))).deadline <= now:
                if oldest.phase == DRAINING:
                    self._close(oldest)  # answered: the client merely has not closed yet
                    continue
                self._count("deadline")
                if oldest.phase == READING:
                    with contextlib.suppress(OSError):  # a courtesy, never waited for
                        oldest.sock.send(response_head(408, CONTENT_TYPE_TEXT, 0))
                # Reset what is stuck with an answer half-sent; a slow head gets its 408 and a plain close.
                self._close(oldest, reset=oldest.phase != READING)

    # --- one connection -------------------------------------------------------------------------------------

    def _on_event(self, connection: _Connection, mask: int) -> None:
        if connection.phase == READING:
            self._step(connection, self._read_head)
        elif connection.phase == WRITING:
            self._step(connection, self._write)
        elif connection.phase == DRAINING:
            self._step(connection, self._drain)

    def _step(self, connection: _Connection, action: Callable[..., None], *args: Any) -> None:
        """Run one step of a connection; a bug met there closes that connection, not the endpoint."""
        try:
            action(connection, *args)
        except Exception:
            self._failed(f"serving {peer(connection.address)}")
            self._close(connection, reset=True)

    def _failed(self, what: str) -> None:
        """Counted, in the periodic report; the first one's traceback logged (a flood of one bug is not)."""
        self._count("failed")
        if self._counts["failed"] == 1:
            log.exception("monitoring: %s failed", what)

    def _read_head(self, connection: _Connection) -> None:
        head = connection.head
        try:
            data = connection.sock.recv(HEAD_LIMIT - len(head))
        except BlockingIOError:
            return
        except OSError:
            self._close(connection, reset=True)
            return
        if not data:
            self._close(connection)
            return
        scanned = len(head)
        head += data
        end = head_end(head, scanned)
        if end < 0:
            if len(head) >= HEAD_LIMIT:
                self._count("too_large")
                self._answer(connection, 431, b"request head too large\n")
            return
        request = parse_request(bytes(head[:end]))
        connection.head = bytearray()
        if isinstance(request, int):
            self._count("too_large" if request == 431 else "bad_request")
            self._answer(connection, request, f"{_REASONS[request].lower()}\n".encode())
            return
        connection.request = request
        if request.path == "/ready":
            try:
                reason = self.ready()
            except Exception:
                log.exception("monitoring: the readiness check failed")
                self._answer(connection, 500, b"internal error\n")
                return
            status, text = (200, "ready\n") if reason is None else (503, f"not ready: {reason}\n")
            self._answer(connection, status, text.encode())
        elif request.path == "/metrics":
            connection.phase = RENDERING
            self._watch(connection, 0)  # nothing to read or write until it is rendered
            self._renderer.request(connection)
        else:
            self._answer(connection, 404, b"not found\n")

    def _answer(
        self, connection: _Connection, status: int, body: bytes, content_type: str = CONTENT_TYPE_TEXT
    ) -> None:
        request = connection.request
        head_only = request is not None and request.head_only
        connection.out = [memoryview(response_head(status, content_type, len(body)))]
        if body and not head_only:
            connection.out.append(memoryview(body))  # not copied: scrapes rendered together share one body
        connection.phase = WRITING
        self._count("answered")
        if log.isEnabledFor(logging.DEBUG):
            asked = f"{'HEAD' if head_only else 'GET'} {request.path}" if request is not None else "-"
            log.debug("monitoring %s: %s -> %d", peer(connection.address), asked, status)
        self._write(connection)

    def _write(self, connection: _Connection) -> None:
        out = connection.out
        try:
            sent = connection.sock.sendmsg(out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(connection, reset=True)
            return
        while out and sent >= len(out[0]):
            sent -= len(out.pop(0))
        if out:
            out[0] = out[0][sent:]
            self._watch(connection, selectors.EVENT_WRITE)
            return
        # Answered. Half-close, then read what the client still sends until it closes: closing with unread
        # bytes would reset the connection, and a reset can destroy the answer before the client reads it.
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(connection)
            return
        connection.phase = DRAINING
        self._watch(connection, selectors.EVENT_READ)
        self._drain(connection)

    def _drain(self, connection: _Connection) -> None:
        try:
            count = connection.sock.recv_into(self._scratch)
        except BlockingIOError:
            return
        except OSError:
            self._close(connection)
            return
        connection.drained += count
        if count == 0:
            self._close(connection)
        elif connection.drained >= DRAIN_LIMIT:
            self._close(connection, reset=True)  # it keeps sending: not worth more than DRAIN_LIMIT

    def _watch(self, connection: _Connection, events: int) -> None:
        if events == connection.events:
            return
        if not events:
            self._selector.unregister(connection.sock)
        elif connection.events:
            self._selector.modify(connection.sock, events, connection)
        else:
            self._selector.register(connection.sock, events, connection)
        connection.events = events

    def _close(self, connection: _Connection, reset: bool = False) -> None:
        pool = self._pools[connection.loopback]
        if connection not in pool:
            return
        del pool[connection]
        self._per_source[connection.source] -= 1
        if not self._per_source[connection.source]:
            del self._per_source[connection.source]
        self._watch(connection, 0)
        connection.phase = CLOSED
        connection.out = []
        sock = connection.sock
        try:
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        except OSError:
            pass
        finally:
            sock.close()

    # --- accounting -----------------------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self._counts[what] += 1

    def _unreported(self) -> dict[str, int]:
        return {kind: self._counts[kind] - self._reported.get(kind, 0) for kind in _TROUBLE
                if self._counts[kind] != self._reported.get(kind, 0)}  # fmt: skip

    def _report(self, now: float) -> None:
        """One line at most every REPORT_INTERVAL about connections the port turned away: an attack (or a
        crowd of real clients) is visible without a line per connection."""
        trouble = self._unreported()
        if not trouble:
            return
        self._next_report = now + REPORT_INTERVAL
        self._reported = {kind: self._counts[kind] for kind in _TROUBLE}
        said = ", ".join(f"{count} {_TROUBLE[kind]}" for kind, count in trouble.items())
        log.warning("monitoring port turned connections away: %s (reported at most every %g s)", said,
                    REPORT_INTERVAL)  # fmt: skip


def _listen(address: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Let [::]:16910 and 0.0.0.0:16910 both bind, as Envoy's two addresses do.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
