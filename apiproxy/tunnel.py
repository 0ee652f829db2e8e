"""One tunnel: a client connection carried to the gateway through CONNECT, then relayed both ways.

This is the hot path. A tunnel is two asyncio Protocols wired to each other: `Tunnel` on the client
(downstream) connection and `UpstreamSide` on the gateway connection. Once the gateway has accepted the
CONNECT, each side's `data_received` writes straight into the other side's transport, and each side's
`pause_writing` stops reading on the other (flow control end to end). A direction that carries bulk data
moves onto a splice pump (`splice.py`) while it streams.

A tunnel's life is a line of phases:

  WAITING    accepted; nothing is dialled until the client's first bytes (a TLS client sends its
             ClientHello at once), so a silent connection costs no gateway or API-server connection
  DIALING    first bytes held (reading stops if 64 KiB pile up); connecting to the gateway (`upstream.Dialer`)
  ANSWERING  the CONNECT request sent; reading the answer (`handshake.py`)
  RELAYING   2xx read: held bytes sent, both directions relayed; half-close carried each way
  ENDING     the first cause of the end has set `reason` and acted on both connections (ENDINGS below)
  ENDED      both connections are gone: counted, logged, forgotten

No client byte reaches the gateway before its 2xx answer (Envoy CVE-2025-64763: bytes sent early are a
request-smuggling vector). Every way a tunnel ends goes through `_end(reason)`, and what it does to the
two connections is the line of ENDINGS for that reason. Deadlines (first byte, CONNECT answer, lingering
close) and the idle check are coarse sweeps of the context, not timers per tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from enum import Enum, IntEnum
from typing import Protocol

from . import splice
from .addresses import peer as format_peer
from .config import TunnelConfig, UpstreamProtocol
from .handshake import ConnectHandshake, HandshakeError, build_connect_request, known_answer
from .proxy_protocol import encode_v2
from .reasons import SETUP_FAILURES, Reason, Refusal
from .splice import READ_SIZE, SPLICE_THRESHOLD, SplicePump, Splicer
from .upstream import (
    Address,
    Connecting,
    Dial,
    Dialer,
    Resolver,
    UpstreamError,
    keepalive_options,
    set_keepalive,
)

log = logging.getLogger(__name__)


class Phase(IntEnum):
    WAITING = 0
    DIALING = 1
    ANSWERING = 2
    RELAYING = 3
    ENDING = 4
    ENDED = 5


class How(Enum):
    """What an ending does to one connection (nothing, if that connection is gone already)."""

    CLOSE = "close"  # send what is buffered, then FIN
    ABORT = "abort"  # drop what is buffered and close
    RESET = "reset"  # close with RST: carries the other side's reset
    LINGER = "linger"  # FIN now, read and discard what the client still sends, close on its FIN (bounded)


# The members as module constants, for the hot path: reading a member from its Enum class costs ~100 ns on
# Python 3.11 (the metaclass's attribute lookup), a global ~10, and a tunnel reads them dozens of times.
WAITING, DIALING, ANSWERING, RELAYING, ENDING, ENDED = Phase
CLOSE, ABORT, RESET, LINGER = How


# reason -> what happens to (the client connection, the gateway connection).
ENDINGS: dict[Reason, tuple[How, How]] = {
    Reason.COMPLETED: (CLOSE, CLOSE),
    Reason.FIRST_BYTE_TIMEOUT: (CLOSE, ABORT),
    Reason.DOWNSTREAM_CLOSED_EARLY: (CLOSE, ABORT),
    Reason.DOWNSTREAM_RESET: (ABORT, RESET),
    # A failed setup: the client learns of it by a plain close, and lingering keeps bytes it sent meanwhile
    # from turning that close into a reset.
    **dict.fromkeys(SETUP_FAILURES, (LINGER, ABORT)),
    Reason.UPSTREAM_CLOSED: (CLOSE, CLOSE),
    Reason.UPSTREAM_RESET: (RESET, ABORT),
    Reason.IDLE_TIMEOUT: (ABORT, ABORT),
    Reason.DRAIN_TIMEOUT: (ABORT, ABORT),
    Reason.INTERNAL_ERROR: (ABORT, ABORT),
}

# A failed setup's lingering close: at most this long, and this many discarded bytes, then an abort.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024
# Reason phrases of refusing gateways are logged up to this length.
REASON_PHRASE_LIMIT = 128
# How often the context checks deadlines (first byte, CONNECT answer, lingering close): they fire up to
# this much late, never early.
DEADLINE_TICK = 0.1
# A gateway connection gets its keepalive options from a coarse sweep at most this long after its dial (a
# tenth of the keepalive idle time, if that is shorter). Keepalive acts only after that idle time (Gardener:
# 2 h), so the first probe comes at most this much later than had the options been set at the dial; a tunnel
# that ends before the sweep never needed them, and setting them costs some 30 us per tunnel.
KEEPALIVE_DELAY = 1.0
# The idle check runs this many times per idle timeout; a tunnel is closed after that many quiet checks in
# a row, so it lives between 1 and 1.25 idle timeouts without traffic.
IDLE_TICKS = 4

# SO_LINGER on with a zero timeout: close() then sends RST. asyncio's abort() alone only closes the
# socket, which the kernel ends with a FIN when nothing is unread, turning a peer's reset into a clean end.
_LINGER_RESET = struct.pack("ii", 1, 0)


def _act(transport: asyncio.Transport, how: How) -> None:
    if how is CLOSE:
        transport.close()
    elif how is RESET:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already gone: abort() below is all there is to do
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()
    else:
        transport.abort()


class TunnelObserver(Protocol):
    """What metrics, the access log and logs see of tunnels. Called on the event loop; must not block."""

    def tunnel_opened(self, tunnel: Tunnel) -> None: ...
    def tunnel_established(self, tunnel: Tunnel, seconds: float) -> None: ...
    def tunnel_closed(self, tunnel: Tunnel) -> None: ...
    def connection_rejected(self, reason: Refusal, peer: tuple[str, int] | None) -> None: ...


class NullObserver:
    """Observes nothing; the default until metrics and logs are plugged in."""

    def tunnel_opened(self, tunnel: Tunnel) -> None:
        pass

    def tunnel_established(self, tunnel: Tunnel, seconds: float) -> None:
        pass

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        pass

    def connection_rejected(self, reason: Refusal, peer: tuple[str, int] | None) -> None:
        pass


class TunnelContext:
    """What every tunnel of one listener shares: configuration, the CONNECT request bytes, the dialer, the
    open tunnels and their admission, the observer, and the coarse sweeps for deadlines and idleness."""

    def __init__(
        self,
        config: TunnelConfig,
        max_connections: int,
        observer: TunnelObserver | None = None,
        max_per_source: int | None = None,
        dialer: Dialer | None = None,
    ) -> None:
        self.config = config
        self.max_connections = max_connections
        self.max_per_source = max_per_source or max_connections
        self.observer: TunnelObserver = observer or NullObserver()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        # Where gateway connections read, and clients once their gateway has filled up (BoundedReads): at
        # most READ_SIZE at a time. Each read is copied out at once, so one buffer serves the whole loop.
        self.read_view = memoryview(bytearray(READ_SIZE))
        # The gateway connections' get_buffer: one bound method shared by every tunnel (see UpstreamSide).
        self.get_read_buffer = self._read_buffer
        self.resolver = Resolver(config.upstream, config.dns_family, config.dns_refresh)
        self.dialer = dialer or Dialer(config, self.resolver, self.read_view)
        self.proxy_protocol = config.upstream_protocol is UpstreamProtocol.PROXY_PROTOCOL_V2
        self.connect_request = (
            b""
            if self.proxy_protocol
            else build_connect_request(config.connect_authority, config.connect_headers)
        )
        self.keepalive = keepalive_options(config)
        self.keepalive_delay = min(KEEPALIVE_DELAY, config.tcp_keepalive_time / 10)
        self.splicer: Splicer | None = None
        # Every admitted tunnel until it ends. Besides counting, this set is what keeps open connections
        # alive: uvloop holds no strong reference to an open transport (libuv keeps a bare pointer), so a
        # tunnel and its transports that nothing reachable refers to are a cycle the garbage collector frees
        # while their sockets are open (seen in a minimal proxy without such a set: glibc's "double free"
        # abort from uvloop's shutdown callback after a half-close).
        self.tunnels: set[Tunnel] = set()
        self.per_source: dict[str, int] = {}
        # Set from SIGTERM (or a handover) on: /ready says 503; tunnels are still admitted.
        self.draining = False
        self._deadlines: set[Tunnel] = set()
        self._deadline_sweep: asyncio.TimerHandle | None = None
        self._keepalive_due: set[Tunnel] = set()
        self._keepalive_sweep: asyncio.TimerHandle | None = None
        self._idle_sweep: asyncio.TimerHandle | None = None

    def _read_buffer(self, sizehint: int) -> memoryview:
        return self.read_view

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        if self.config.splice and splice.AVAILABLE:
            self.splicer = Splicer(loop, unsent_limit=self.config.buffer_size)

    # --- admission -----------------------------------------------------------------------------------

    def admit(self, tunnel: Tunnel) -> Refusal | None:
        """Count `tunnel` in, or say why it is refused. A draining process still admits: on a node-local VIP
        nothing steers new connections elsewhere, so refusing them would protect nothing (see handover/)."""
        if len(self.tunnels) >= self.max_connections:
            return Refusal.OVERFLOW
        peer = tunnel.peer
        # The host, interned: the tunnels of one pod share one string, and release finds the same key.
        tunnel.source = source = sys.intern(peer[0]) if peer is not None else ""
        held = self.per_source.get(source, 0)
        if held >= self.max_per_source:
            return Refusal.SOURCE_LIMIT
        self.per_source[source] = held + 1
        self.tunnels.add(tunnel)
        if self._idle_sweep is None:
            self._idle_sweep = self.loop.call_later(self.config.idle_timeout / IDLE_TICKS, self._sweep_idle)
        return None

    def release(self, tunnel: Tunnel) -> None:
        self.tunnels.discard(tunnel)
        self._deadlines.discard(tunnel)
        self._keepalive_due.discard(tunnel)
        source = tunnel.source
        held = self.per_source.get(source, 0) - 1
        if held > 0:
            self.per_source[source] = held
        else:
            self.per_source.pop(source, None)

    # --- the coarse sweeps ---------------------------------------------------------------------------

    def set_deadline(self, tunnel: Tunnel, seconds: float) -> None:
        tunnel.deadline = self.loop.time() + seconds
        self._deadlines.add(tunnel)
        if self._deadline_sweep is None:
            self._deadline_sweep = self.loop.call_later(DEADLINE_TICK, self._sweep_deadlines)

    def clear_deadline(self, tunnel: Tunnel) -> None:
        self._deadlines.discard(tunnel)
        tunnel.deadline = 0.0  # the shared constant, not a float per idle tunnel

    def _sweep_deadlines(self) -> None:
        self._deadline_sweep = None
        now = self.loop.time()
        expired = [tunnel for tunnel in self._deadlines if tunnel.deadline <= now]
        for tunnel in expired:
            self._deadlines.discard(tunnel)
            tunnel.deadline_passed()
        if self._deadlines:
            self._deadline_sweep = self.loop.call_later(DEADLINE_TICK, self._sweep_deadlines)

    def keepalive_later(self, tunnel: Tunnel) -> None:
        """Give `tunnel`'s gateway connection its keepalive options with the next keepalive sweep."""
        self._keepalive_due.add(tunnel)
        if self._keepalive_sweep is None:
            self._keepalive_sweep = self.loop.call_later(self.keepalive_delay, self._sweep_keepalive)

    def _sweep_keepalive(self) -> None:
        self._keepalive_sweep = None
        due, self._keepalive_due = self._keepalive_due, set()
        for tunnel in due:
            upstream = tunnel.upstream
            if upstream is not None and not upstream.lost:
                with contextlib.suppress(OSError):  # broken meanwhile: its protocol hears of it
                    set_keepalive(upstream.transport, self.keepalive)

    def _sweep_idle(self) -> None:
        self._idle_sweep = None
        idle = [tunnel for tunnel in self.tunnels if tunnel.quiet_since_last_check()]
        for tunnel in idle:
            tunnel.end(Reason.IDLE_TIMEOUT)
        if self.tunnels:
            self._idle_sweep = self.loop.call_later(self.config.idle_timeout / IDLE_TICKS, self._sweep_idle)

    # --- logs ----------------------------------------------------------------------------------------

    def log_failure(self, tunnel: Tunnel, detail: str) -> None:
        log.warning("tunnel from %s failed (%s): %s", format_peer(tunnel.peer), tunnel.reason, detail)


class BoundedReads(asyncio.BufferedProtocol):
    """The client connection's protocol once the gateway connection has filled up: the tunnel's callbacks,
    but reads of at most READ_SIZE (uvloop reads 256 KiB at a time into a fresh object, all of which would
    wait for a gateway that reads slowly). Clients whose gateway keeps up never pay for it (a
    BufferedProtocol costs a Python call more per read); the gateway side always reads so (UpstreamSide)."""

    __slots__ = ("side", "view")

    def __init__(self, side: Tunnel, view: memoryview) -> None:
        self.side = side
        self.view = view

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.side.data_received(self.view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:  # a read uvloop had started before the switch
        self.side.data_received(data)

    def eof_received(self) -> bool | None:
        return self.side.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.side.connection_lost(exc)

    def pause_writing(self) -> None:
        self.side.pause_writing()

    def resume_writing(self) -> None:
        self.side.resume_writing()


class UpstreamSide(asyncio.BufferedProtocol):
    """The gateway connection of a tunnel, from the moment the dialer hands it over. It reads through the
    context's buffer, at most READ_SIZE at a time (the connection reads so from the start: `Connecting`),
    so a client that reads slowly or not at all costs the direction --buffer-size plus one such read.

    Memory per open tunnel: uvloop keeps a bound method of each read callback it finds on the protocol
    (64 bytes each). `get_buffer` is therefore the context's (one bound method for every tunnel, in a
    slot), and `data_received` is None: uvloop binds it even for a BufferedProtocol but never calls it
    (a missing one would leave `Connecting`'s bound there, and `Connecting` alive). The chunks that
    `Connecting` replays come through `received`."""

    __slots__ = (
        "eof",
        "forward",
        "get_buffer",
        "handshake",
        "head_bytes",
        "lost",
        "rx_bytes",
        "transport",
        "tunnel",
        "view",
    )

    get_buffer: Callable[[int], memoryview]  # type: ignore[assignment]  # the context's, set per tunnel
    data_received = None

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        # The reader of a CONNECT answer whose first bytes were not a head read before (Tunnel.answer_received).
        self.handshake: ConnectHandshake | None = None
        # Set when the relay starts: the client's transport, where the gateway's bytes go.
        self.forward: asyncio.Transport | None = None
        self.rx_bytes = 0
        # Bytes of the gateway's answer head (all it sent, if it refused): Envoy's upstream byte counters
        # include them.
        self.head_bytes = 0
        self.eof = False
        self.lost = False
        context = tunnel.context
        self.view = context.read_view
        self.get_buffer = context.get_read_buffer

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it (typing.cast would be a
        # Python call per connection).
        transport: asyncio.Transport = base  # type: ignore[assignment]
        self.transport = transport
        buffer_size = self.tunnel.context.config.buffer_size
        transport.set_write_buffer_limits(high=buffer_size, low=buffer_size // 4)

    def buffer_updated(self, nbytes: int) -> None:
        # `received`, inlined: this is the hot path of every byte from the gateway.
        data = self.view[:nbytes].tobytes()
        forward = self.forward
        if forward is not None:
            self.rx_bytes += nbytes
            forward.write(data)
            if nbytes >= SPLICE_THRESHOLD:
                self.tunnel.splice(False)
        else:
            self.head_bytes += nbytes
            self.tunnel.answer_received(data)

    def received(self, data: bytes) -> None:
        """A chunk the connection read before the hand-over (replayed by `Connecting`)."""
        forward = self.forward
        if forward is not None:
            self.rx_bytes += len(data)
            forward.write(data)
            if len(data) >= SPLICE_THRESHOLD:
                self.tunnel.splice(False)
        else:
            self.head_bytes += len(data)
            self.tunnel.answer_received(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.tunnel.gateway_eof()
        return True  # keep our sending direction open: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.gateway_lost(exc)

    # Flow control end to end: when the gateway transport's buffer is full, stop reading the client (and
    # read it in bounded reads from then on), and vice versa (Tunnel.pause_writing).
    def pause_writing(self) -> None:
        tunnel = self.tunnel
        tunnel.transport.pause_reading()
        if not tunnel.bounded:  # reading is paused: the next read (after resume_reading) is a bounded one
            tunnel.bounded = True
            tunnel.transport.set_protocol(BoundedReads(tunnel, tunnel.context.read_view))

    def resume_writing(self) -> None:
        self.tunnel.read_client()


class Tunnel(asyncio.Protocol):
    """The client connection of a tunnel, and the tunnel's record (phase, times, bytes, reason)."""

    __slots__ = (
        "bounded",
        "client_eof",
        "client_lost",
        "connected_at",
        "context",
        "deadline",
        "down_pump",
        "ended_at",
        "forward",
        "held",
        "idle_mark",
        "idle_quiet",
        "lingered",
        "pending",
        "phase",
        "published_rx",
        "published_tx",
        "reason",
        "response_code",
        "rx_bytes",
        "setup",
        "source",
        "started_at",
        "started_wall",
        "transport",
        "up_pump",
        "upstream",
        "upstream_address",
    )

    def __init__(self, context: TunnelContext) -> None:
        self.context = context
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.phase = WAITING
        self.upstream: UpstreamSide | None = None
        self.upstream_address: Address | None = None
        self.source = ""  # the client's host, as admission counted it (TunnelContext.admit)
        # Once relaying: the gateway's transport, where the client's bytes go.
        self.forward: asyncio.Transport | None = None
        # Client bytes read before the gateway's 2xx (one read: reading is paused after it).
        self.pending: list[bytes] | None = None
        self.held = 0  # bytes in `pending`, counted
        self.bounded = False  # reads are BoundedReads (its destination has filled up once)
        self.up_pump: SplicePump | None = None
        self.down_pump: SplicePump | None = None
        self.setup: Dial | None = None  # the dial, until it reports (gateway_reached / gateway_unreached)
        self.deadline = 0.0
        # Bytes moved at the last idle check; -1 so that the first check never counts as quiet.
        self.idle_mark = -1
        self.idle_quiet = 0
        self.lingered = 0
        self.client_eof = False
        self.client_lost = False
        self.rx_bytes = 0  # from the client (sent to the gateway)
        # Bytes the monitoring has counted already while the tunnel is open (it publishes every few seconds).
        self.published_rx = self.published_tx = 0
        self.reason: Reason | None = None
        self.response_code = 0
        # Times (time.monotonic()), each set when it happens; 0.0 until then. The wall-clock start (for the
        # access log) is worked out at the end from the end's wall clock: no float per open tunnel.
        self.started_at = 0.0
        self.connected_at = 0.0
        self.ended_at = 0.0
        self.started_wall = 0.0

    # --- figures for observers ------------------------------------------------------------------------

    @property
    def tx_bytes(self) -> int:
        """Bytes sent to the client (received from the gateway after its answer)."""
        return self.upstream.rx_bytes if self.upstream is not None else 0

    @property
    def open(self) -> bool:
        return self.phase is not ENDED

    @property
    def peer(self) -> tuple[str, int] | None:
        """The client's (host, port). uvloop keeps the address inside the transport and builds a tuple on
        each request: asked for when needed (admission, the access log, logs), it costs no tuple, string and
        int per open tunnel. Release uses the key admission kept (`source`)."""
        transport: asyncio.Transport | None = self.transport  # None before connection_made
        if transport is None:
            return None
        try:
            peer = transport.get_extra_info("peername")
        except AttributeError:  # uvloop, once closed, where it could not read the address at accept
            return None
        return peer if peer is None or len(peer) == 2 else (peer[0], peer[1])

    # --- the client connection ------------------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it (as in UpstreamSide).
        transport: asyncio.Transport = base  # type: ignore[assignment]
        self.transport = transport
        context = self.context
        self.started_at = time.monotonic()
        refusal = context.admit(self)
        if refusal is not None:
            self.phase = ENDED
            self.client_lost = True
            self.ended_at = self.started_at
            transport.abort()
            context.observer.connection_rejected(refusal, self.peer)
            return
        buffer_size = context.config.buffer_size
        transport.set_write_buffer_limits(high=buffer_size, low=buffer_size // 4)
        context.observer.tunnel_opened(self)
        if context.config.first_byte_timeout:
            context.set_deadline(self, context.config.first_byte_timeout)
        else:  # configured to dial at once, as Envoy does (for protocols where the server speaks first)
            self._dial([])

    def data_received(self, data: bytes) -> None:
        forward = self.forward
        if forward is not None:
            self.rx_bytes += len(data)
            forward.write(data)
            if len(data) >= SPLICE_THRESHOLD:
                self.splice(True)
            return
        phase = self.phase
        if phase is WAITING:
            # The first bytes: now the gateway is worth a connection.
            self.context.clear_deadline(self)
            self._dial([data])
        elif phase < RELAYING:
            assert self.pending is not None
            self.pending.append(data)
            self._hold(len(data))
        else:
            self._discard(data)

    def eof_received(self) -> bool:
        self.client_eof = True
        phase = self.phase
        if phase is RELAYING:
            upstream = self.upstream
            assert upstream is not None
            if upstream.eof:
                self._end(Reason.COMPLETED)
            elif upstream.transport.can_write_eof():
                upstream.transport.write_eof()
        elif phase is WAITING:
            self._end(Reason.DOWNSTREAM_CLOSED_EARLY)
        elif phase is ENDING:
            self.transport.close()  # a lingering close is over
        # While dialling or waiting for the answer, the FIN is remembered and carried after the held bytes.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_lost = True
        if exc is not None:
            self._end(Reason.DOWNSTREAM_RESET)
        elif self.phase is RELAYING:
            self._end(Reason.COMPLETED)
        else:
            self._end(Reason.DOWNSTREAM_CLOSED_EARLY)
        self._maybe_finish()

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        upstream = self.upstream
        if upstream is not None and not upstream.eof and self.down_pump is None and self.phase < ENDING:
            upstream.transport.resume_reading()

    def read_client(self) -> None:
        """Read the client again (the gateway's buffer has room), unless a pump reads it or it is done."""
        if not self.client_eof and self.up_pump is None and self.phase is RELAYING:
            self.transport.resume_reading()

    # --- reaching the gateway -------------------------------------------------------------------------

    def _hold(self, count: int) -> None:
        # Client bytes before the 2xx wait in `pending`; reading stops only once READ_SIZE is held (a TLS
        # client sends its ClientHello and waits: pausing and resuming would cost two system calls).
        self.held += count
        if self.held >= READ_SIZE and self.held - count < READ_SIZE:
            self.transport.pause_reading()

    def _dial(self, pending: list[bytes]) -> None:
        self.pending = pending
        self._hold(sum(map(len, pending)))
        self.phase = DIALING
        self.setup = setup = self.context.dialer.dial(self)
        try:
            setup.start()
        except Exception as error:  # a bug: end the tunnel rather than leave the client waiting for an hour
            self.setup = None
            self._setup_failed(error)

    def gateway_reached(self, connection: Connecting, address: Address) -> None:
        """The dial's outcome (upstream.Dial): a connection to the gateway, not yet handed to a protocol."""
        self.setup = None
        try:
            self._use_gateway(connection, address)
        except Exception as error:  # a bug, as above
            if self.upstream is None and connection.transport is not None:
                connection.transport.abort()
            self._setup_failed(error)
        self._maybe_finish()

    def gateway_unreached(self, error: BaseException | None) -> None:
        """The dial's outcome: no connection (an UpstreamError says why; None: the tunnel ended meanwhile)."""
        self.setup = None
        if isinstance(error, UpstreamError):
            self._end(error.reason, str(error))
        elif error is not None:
            self._setup_failed(error)
        self._maybe_finish()

    def _use_gateway(self, connection: Connecting, address: Address) -> None:
        context = self.context
        self.upstream_address = address
        self.connected_at = time.monotonic()
        if self.phase is not DIALING:  # the tunnel ended, and the dial could not be cancelled in time
            assert connection.transport is not None
            connection.transport.abort()
            return
        upstream = UpstreamSide(self)
        gateway = connection.hand_over(upstream)
        self.upstream = upstream
        context.keepalive_later(self)
        if context.proxy_protocol:
            # The gateway learns the shoot from the destination: the address the client connected to.
            local = self.transport.get_extra_info("sockname")
            gateway.write(encode_v2(self.peer or ("0.0.0.0", 0), (local[0], local[1])))
            self._start_relay(b"")
        else:
            gateway.write(context.connect_request)
            self.phase = ANSWERING
            context.set_deadline(self, context.config.connect_answer_timeout)
        connection.replay(upstream)

    def _setup_failed(self, error: BaseException) -> None:
        log.error("tunnel from %s: setup failed", format_peer(self.peer), exc_info=error)
        self._end(Reason.INTERNAL_ERROR)

    def answer_received(self, data: bytes) -> None:
        """Bytes of the gateway's CONNECT answer (and any tunnel data right behind it)."""
        if self.phase is not ANSWERING:
            return  # ending: whatever the gateway still sends is dropped
        upstream = self.upstream
        assert upstream is not None
        handshake = upstream.handshake
        if handshake is None:
            # The answer's first bytes. A gateway answers the same few heads over and over: one h11 has read
            # before needs no parser of its own (see handshake.py).
            known = known_answer(data)
            if known is not None:
                self._answered(known[0], known[1], data[known[2] :])
                return
            handshake = upstream.handshake = ConnectHandshake()
        try:
            answer = handshake.feed(data)
        except HandshakeError as error:
            self._end(error.reason, str(error))
            return
        if answer is not None:
            self._answered(answer.status, answer.reason, answer.tunnel_data)

    def _answered(self, status: int, reason: bytes, tunnel_data: bytes) -> None:
        self.response_code = status
        if not 200 <= status < 300:
            phrase = reason[:REASON_PHRASE_LIMIT].decode("ascii", "backslashreplace")
            self._end(Reason.GATEWAY_REJECTED, f"gateway answered the CONNECT with {status} {phrase!r}")
            return
        assert self.upstream is not None
        self.upstream.handshake = None
        self._start_relay(tunnel_data)

    def _start_relay(self, tunnel_data: bytes) -> None:
        upstream = self.upstream
        assert upstream is not None
        self.context.clear_deadline(self)
        self.phase = RELAYING
        client, gateway = self.transport, upstream.transport
        upstream.forward = client
        self.forward = gateway
        if tunnel_data:  # bytes the gateway sent right behind its answer belong to the client
            upstream.head_bytes -= len(tunnel_data)
            upstream.rx_bytes += len(tunnel_data)
            client.write(tunnel_data)
        if self.pending is not None:
            for chunk in self.pending:
                self.rx_bytes += len(chunk)
                gateway.write(chunk)
            self.pending = None
        if self.client_eof:
            if gateway.can_write_eof():
                gateway.write_eof()
        elif self.held >= READ_SIZE:
            client.resume_reading()
        self.context.observer.tunnel_established(self, time.monotonic() - self.started_at)

    def gateway_eof(self) -> None:
        phase = self.phase
        if phase is RELAYING:
            if self.client_eof:
                self._end(Reason.COMPLETED)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        elif phase is ANSWERING:
            upstream = self.upstream
            assert upstream is not None
            try:
                (upstream.handshake or ConnectHandshake()).feed_eof()
            except HandshakeError as error:
                self._end(error.reason, str(error))

    def gateway_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._end(Reason.UPSTREAM_RESET)
        elif self.phase is RELAYING and self.client_eof:
            self._end(Reason.COMPLETED)  # the gateway closed after the client had finished sending
        else:
            self._end(Reason.UPSTREAM_CLOSED)
        self._maybe_finish()

    # --- splice (bulk directions; see splice.py) ------------------------------------------------------

    def splice(self, up: bool) -> None:
        """Carry one direction (`up`: client -> gateway) with a splice pump from now on, if possible."""
        splicer = self.context.splicer
        upstream = self.upstream
        if splicer is None or upstream is None or self.phase is not RELAYING:
            return
        if up and self.up_pump is None:
            splicer.start(self, True, self.transport, upstream.transport)
        elif not up and self.down_pump is None:
            splicer.start(self, False, upstream.transport, self.transport)

    def pump_moved(self, up: bool, count: int) -> None:
        if up:
            self.rx_bytes += count
        elif self.upstream is not None:
            self.upstream.rx_bytes += count

    def pump_eof(self, up: bool) -> None:
        if up:
            self.eof_received()
        elif self.upstream is not None:
            self.upstream.eof_received()

    def pump_failed(self, up: bool, source: bool) -> None:
        """A pump's read (`source`) or write failed: that connection broke, as a reset does."""
        client_broke = up == source
        self._end(Reason.DOWNSTREAM_RESET if client_broke else Reason.UPSTREAM_RESET)

    def pump_released(self, up: bool, leftover: bytes) -> None:
        """A direction is back on the Protocol relay (it went quiet, or its destination stopped reading and
        `leftover` is what its pump held): its source is read by its transport again, as flow control
        allows."""
        upstream = self.upstream
        if self.phase is not RELAYING or upstream is None:
            return
        # Writing the leftover may fill the destination past its high-water mark: then pause_writing has
        # stopped the source and resume_writing will start it again. Below the mark no callback will come,
        # so the source is read again now (a leftover smaller than the mark stranded it before).
        high = self.context.config.buffer_size
        if up:
            if leftover:
                upstream.transport.write(leftover)
            if upstream.transport.get_write_buffer_size() <= high:
                self.read_client()
        else:
            if leftover:
                self.transport.write(leftover)
            if not upstream.eof and self.transport.get_write_buffer_size() <= high:
                upstream.transport.resume_reading()

    # --- endings --------------------------------------------------------------------------------------

    def end(self, reason: Reason) -> None:
        """End the tunnel from outside (the drain deadline)."""
        self._end(reason)

    def deadline_passed(self) -> None:
        phase = self.phase
        if phase is WAITING:
            self._end(Reason.FIRST_BYTE_TIMEOUT)
        elif phase is ANSWERING:
            timeout = self.context.config.connect_answer_timeout
            self._end(Reason.ANSWER_TIMEOUT, f"gateway sent no CONNECT answer within {timeout:g}s")
        elif phase is ENDING and not self.client_lost:
            self.transport.abort()  # the lingering close took too long

    def quiet_since_last_check(self) -> bool:
        """For the idle sweep: True after IDLE_TICKS checks in a row without a byte moving."""
        if self.phase >= ENDING:
            return False
        moved = self.rx_bytes + self.tx_bytes
        if moved != self.idle_mark:
            self.idle_mark = moved
            self.idle_quiet = 0
            return False
        self.idle_quiet += 1
        return self.idle_quiet >= IDLE_TICKS

    def _end(self, reason: Reason, detail: str | None = None) -> None:
        """The one way a tunnel ends: the first cause sets the reason and acts on both connections."""
        if self.phase >= ENDING:
            return
        self.phase = ENDING
        self.reason = reason
        context = self.context
        if self.deadline:  # most tunnels end relaying, when no deadline runs
            context.clear_deadline(self)
        if detail is not None:
            context.log_failure(self, detail)
        if self.up_pump is not None or self.down_pump is not None:
            assert context.splicer is not None
            context.splicer.stop(self)
        if self.setup is not None:
            self.setup.cancel()
        self.pending = None
        client_how, gateway_how = ENDINGS[reason]
        upstream = self.upstream
        if upstream is not None:
            upstream.handshake = None
            if not upstream.lost:
                _act(upstream.transport, gateway_how)
        if not self.client_lost:
            if client_how is LINGER:
                self._linger()
            else:
                _act(self.transport, client_how)

    def _linger(self) -> None:
        transport = self.transport
        if self.client_eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        self.context.set_deadline(self, LINGER_SECONDS)

    def _discard(self, data: bytes) -> None:
        """Client bytes during a lingering close: dropped, up to a bound."""
        self.lingered += len(data)
        if self.lingered > LINGER_BYTES:
            self.transport.abort()

    def _maybe_finish(self) -> None:
        if self.phase is not ENDING or not self.client_lost:
            return
        upstream = self.upstream
        if upstream is not None and not upstream.lost:
            return
        if self.setup is not None:
            return  # the dial reports back
        self.phase = ENDED
        self.ended_at = ended_at = time.monotonic()
        self.started_wall = time.time() - (ended_at - self.started_at)
        context = self.context
        context.release(self)
        context.observer.tunnel_closed(self)
        self._let_go()

    def _let_go(self) -> None:
        """Drop the links between the ended tunnel, its gateway side and their closed connections. Each
        transport keeps its protocol, so linked they are a cycle, which only the garbage collector frees,
        and a tunnel that lived long enough to reach its oldest generation waits for a full collection
        (2,000 idle tunnels opened and closed a round grew RSS by 2-4 MiB a round). Unlinked, reference
        counting frees them at once. The record stays readable: reason, times, bytes (`upstream` is
        kept for `tx_bytes`)."""
        self.transport = None  # type: ignore[assignment]  # the connections are gone
        self.forward = None
        upstream = self.upstream
        if upstream is not None:
            upstream.transport = upstream.forward = None  # type: ignore[assignment]
            upstream.tunnel = None  # type: ignore[assignment]
