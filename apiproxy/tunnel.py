"""One tunnel: a client connection carried to the gateway through CONNECT, then relayed both ways.

This is the hot path. A tunnel is two asyncio Protocols wired to each other: `Tunnel` on the client
(downstream) connection and `UpstreamSide` on the gateway connection. Once the gateway has accepted the
CONNECT, each side's `data_received` writes straight into the other side's transport, and each side's
`pause_writing` stops reading on the other: memory per tunnel is bounded by the two write buffers
(`buffer_size` each) plus one read. A direction that carries bulk data moves onto a splice pump
(`splice.py`) for as long as it streams: the kernel moves its bytes, and the Protocol pair takes over again
once it has gone quiet.

Life of a tunnel:
  accepted -> (client bytes held, reading paused) -> gateway connected -> CONNECT sent -> 2xx read
  -> held bytes sent -> relay -> both directions ended (EOF) or an error/idle timeout -> closed.
No client byte reaches the gateway before its 2xx answer (Envoy CVE-2025-64763: bytes sent early are
a request-smuggling vector). Every tunnel ends with exactly one `reason`, set by the first cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from .handshake import ConnectHandshake, HandshakeError
from .proxy_protocol import encode_v2
from .splice import SPLICE_THRESHOLD, SplicePump
from .upstream import Address, UpstreamError

if TYPE_CHECKING:
    from .server import TunnelContext


class TunnelObserver(Protocol):
    """What metrics, the access log and logs see of tunnels. Called on the event loop; must not block."""

    def tunnel_opened(self, tunnel: Tunnel) -> None: ...
    def tunnel_established(self, tunnel: Tunnel) -> None: ...
    def tunnel_closed(self, tunnel: Tunnel) -> None: ...
    def connection_rejected(self, reason: str, peer: tuple[str, int] | None) -> None: ...


# Reasons a tunnel ended. "completed": both directions ended by EOF, or the client closed after the
# relay began. Every other reason is a failure of some part, named for the part.
COMPLETED = "completed"
IDLE_TIMEOUT = "idle_timeout"
DRAIN_TIMEOUT = "drain_timeout"
DOWNSTREAM_CLOSED_EARLY = "downstream_closed_early"
DOWNSTREAM_RESET = "downstream_reset"
UPSTREAM_CLOSED = "upstream_closed"
UPSTREAM_RESET = "upstream_reset"
ANSWER_TIMEOUT = "answer_timeout"
GATEWAY_REJECTED = "gateway_rejected"

# The two directions of a tunnel, as logs name them.
UP = "client -> gateway"
DOWN = "gateway -> client"

# SO_LINGER on with a zero timeout: close() then sends RST. asyncio's abort() alone only closes the
# socket, which the kernel ends with a FIN when nothing is unread, turning a peer's reset into a clean end.
_LINGER_RESET = struct.pack("ii", 1, 0)


def reset(transport: asyncio.Transport) -> None:
    """Close a connection with RST, to carry a reset from the other side of the tunnel."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already gone: abort() below is all there is to do
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


# The idle timer fires this many times per idle timeout; a tunnel is closed after that many quiet ticks
# in a row, so it lives between 1 and 1.25 idle timeouts without traffic. One timer per tunnel, no
# per-chunk clock reads.
_IDLE_TICKS = 4


class UpstreamSide(asyncio.Protocol):
    """The gateway connection of a tunnel."""

    __slots__ = ("eof", "handshake", "head_bytes", "lost", "peer_write", "rx_bytes", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport | None = None
        self.handshake: ConnectHandshake | None = None
        # Set when the relay starts: the client transport's write.
        self.peer_write: Callable[[bytes], None] | None = None
        self.rx_bytes = 0
        # Bytes of the gateway's answer head (all it sent, if it refused): Envoy's upstream byte counters
        # include them.
        self.head_bytes = 0
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        # Known to the tunnel from the first moment: a gateway may send bytes before the dial returns.
        self.tunnel.upstream = self
        buffer_size = self.tunnel.context.config.buffer_size
        transport.set_write_buffer_limits(high=buffer_size, low=buffer_size // 4)

    def data_received(self, data: bytes) -> None:
        peer_write = self.peer_write
        if peer_write is not None:
            self.rx_bytes += len(data)
            peer_write(data)
            if len(data) >= SPLICE_THRESHOLD and self.tunnel.context.splice:
                self.tunnel.splice_down()
        else:
            self.head_bytes += len(data)
            self.tunnel.answer_received(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.tunnel.upstream_eof()
        return True  # keep our sending direction open: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.upstream_lost(exc)

    # The client transport's buffer is ours to fill: when the gateway's transport is full, stop reading
    # the client, and vice versa (Tunnel.pause_writing).
    def pause_writing(self) -> None:
        self.tunnel.transport.pause_reading()

    def resume_writing(self) -> None:
        tunnel = self.tunnel
        if not tunnel.client_eof and tunnel.up_pump is None:  # a pump reads the client itself
            tunnel.transport.resume_reading()


class Tunnel(asyncio.Protocol):
    """The client connection of a tunnel, and the tunnel's record (times, bytes, reason)."""

    __slots__ = (
        "answer_timer",
        "client_eof",
        "client_lost",
        "connected_at",
        "context",
        "down_pump",
        "ended_at",
        "established_at",
        "idle_mark",
        "idle_quiet_ticks",
        "idle_timer",
        "peer",
        "peer_write",
        "pending",
        "reason",
        "relaying",
        "response_code",
        "rx_bytes",
        "setup",
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
        self.upstream: UpstreamSide | None = None
        self.upstream_address: Address | None = None
        self.peer: tuple[str, int] | None = None
        self.peer_write: Callable[[bytes], None] | None = None
        self.pending: list[bytes] | None = None
        # Splice pumps of the two directions (client -> gateway, gateway -> client), once bulk data moves.
        self.up_pump: SplicePump | None = None
        self.down_pump: SplicePump | None = None
        self.setup: asyncio.Task[None] | None = None
        self.answer_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_mark = 0
        self.idle_quiet_ticks = 0
        self.relaying = False
        self.client_eof = False
        self.client_lost = False
        self.rx_bytes = 0  # from the client (sent to the gateway)
        self.reason: str | None = None
        self.response_code = 0
        self.started_wall = 0.0
        self.started_at = 0.0
        self.connected_at = 0.0
        self.established_at = 0.0
        self.ended_at = 0.0

    # --- figures for observers ------------------------------------------------------------------------

    @property
    def tx_bytes(self) -> int:
        """Bytes sent to the client (received from the gateway after its answer)."""
        return self.upstream.rx_bytes if self.upstream is not None else 0

    @property
    def open(self) -> bool:
        return self.ended_at == 0.0

    # --- client side ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        context = self.context
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1]) if peer else None
        refusal = context.admission()
        if refusal is not None:
            self.reason = refusal
            self.ended_at = self.started_at
            self.client_lost = True
            transport.abort()
            context.observer.connection_rejected(refusal, self.peer)
            return
        # Nothing is read until the gateway has accepted; see data_received for uvloop's first read.
        transport.pause_reading()
        buffer_size = context.config.buffer_size
        transport.set_write_buffer_limits(high=buffer_size, low=buffer_size // 4)
        context.tunnels.add(self)
        context.observer.tunnel_opened(self)
        self.idle_timer = context.loop.call_later(context.config.idle_timeout / _IDLE_TICKS, self._idle_tick)
        self.setup = context.loop.create_task(self._open_upstream())
        self.setup.add_done_callback(self._setup_done)

    def data_received(self, data: bytes) -> None:
        peer_write = self.peer_write
        if peer_write is not None:
            self.rx_bytes += len(data)
            peer_write(data)
            if len(data) >= SPLICE_THRESHOLD and self.context.splice:
                self.splice_up()
            return
        # Before the gateway's 2xx. uvloop reads a new connection once even when connection_made paused
        # it, so early bytes do arrive: hold them (one read, bounded) for after the answer.
        if self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)
        self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.relaying:
            upstream = self.upstream
            assert upstream is not None and upstream.transport is not None
            if upstream.eof:
                self._close(COMPLETED)
            elif upstream.transport.can_write_eof():
                upstream.transport.write_eof()
        # Before the answer the FIN is remembered and carried after the held bytes.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_lost = True
        self._stop_pumps()
        if self.reason is None:
            if exc is not None:
                self.reason = DOWNSTREAM_RESET
            elif self.relaying:
                self.reason = COMPLETED
            else:
                self.reason = DOWNSTREAM_CLOSED_EARLY
        upstream = self.upstream
        if upstream is not None and not upstream.lost and upstream.transport is not None:
            if exc is not None:
                reset(upstream.transport)  # carry the reset
            else:
                upstream.transport.close()  # flush what the client sent, then FIN
        elif self.setup is not None and not self.setup.done():
            self.setup.cancel()
        self._maybe_finish()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        upstream = self.upstream
        if (
            upstream is not None
            and upstream.transport is not None
            and not upstream.eof
            and self.down_pump is None
        ):
            upstream.transport.resume_reading()

    # --- gateway side ---------------------------------------------------------------------------------

    async def _open_upstream(self) -> None:
        context = self.context
        upstream = UpstreamSide(self)
        if not context.proxy_protocol:
            upstream.handshake = ConnectHandshake()
        try:
            transport, address = await context.dialer.connect(lambda: upstream)
        except UpstreamError as error:
            self._fail(error.reason, str(error))
            return
        except asyncio.CancelledError:
            return  # the client left while we dialled; connection_lost has recorded it
        self.upstream_address = address
        self.connected_at = time.monotonic()
        if self.client_lost or self.reason is not None:
            transport.close()
            return
        if context.proxy_protocol:
            # The gateway learns the shoot from the destination: the address the client connected to.
            local = self.transport.get_extra_info("sockname")
            transport.write(encode_v2(self.peer or ("0.0.0.0", 0), (local[0], local[1])))
            self._start_relay(b"")
            return
        transport.write(context.connect_request)
        self.answer_timer = context.loop.call_later(
            context.config.connect_answer_timeout, self._answer_timeout
        )

    def answer_received(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None or upstream.handshake is None:
            return  # closing
        try:
            answer = upstream.handshake.feed(data)
        except HandshakeError as error:
            self._fail(error.reason, str(error))
            return
        if answer is None:
            return
        self.response_code = answer.status
        if not answer.accepted:
            reason = answer.reason.decode("ascii", "replace")
            self._fail(GATEWAY_REJECTED, f"gateway answered the CONNECT with {answer.status} {reason}")
            return
        upstream.handshake = None
        self._start_relay(answer.tunnel_data)

    def _start_relay(self, tunnel_data: bytes) -> None:
        upstream = self.upstream
        assert upstream is not None and upstream.transport is not None
        if self.answer_timer is not None:
            self.answer_timer.cancel()
            self.answer_timer = None
        self.established_at = time.monotonic()
        self.relaying = True
        client, gateway = self.transport, upstream.transport
        upstream.peer_write = client.write
        self.peer_write = gateway.write
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
        elif not self.client_lost:
            client.resume_reading()
        self.context.observer.tunnel_established(self)

    def upstream_eof(self) -> None:
        upstream = self.upstream
        if not self.relaying:
            if upstream is not None and upstream.handshake is not None:
                try:
                    upstream.handshake.feed_eof()
                except HandshakeError as error:
                    self._fail(error.reason, str(error))
            return
        if self.client_eof:
            self._close(COMPLETED)
        elif self.transport.can_write_eof():
            self.transport.write_eof()

    def upstream_lost(self, exc: Exception | None) -> None:
        self._stop_pumps()
        if self.reason is None:
            if exc is not None:
                self.reason = UPSTREAM_RESET
            elif self.relaying:
                # The gateway closed the tunnel. A clean end if the client had finished sending.
                self.reason = COMPLETED if self.client_eof else UPSTREAM_CLOSED
            else:
                self.reason = UPSTREAM_CLOSED
        if not self.client_lost:
            if exc is not None:
                reset(self.transport)  # carry the reset
            else:
                self.transport.close()
        self._maybe_finish()

    # --- splice (bulk directions; see splice.py) ------------------------------------------------------

    def splice_up(self) -> None:
        """Carry client -> gateway with a splice pump from now on."""
        upstream = self.upstream
        if self.up_pump is None and upstream is not None and upstream.transport is not None:
            self.up_pump = self._start_pump(
                UP, self.transport, upstream.transport, self._up_moved, self.eof_received
            )

    def splice_down(self) -> None:
        """Carry gateway -> client with a splice pump from now on."""
        upstream = self.upstream
        if self.down_pump is None and upstream is not None and upstream.transport is not None:
            self.down_pump = self._start_pump(
                DOWN, upstream.transport, self.transport, self._down_moved, upstream.eof_received
            )

    def release_quiet_pumps(self) -> bool:
        """Hand a direction that has gone quiet back to its transports (frees the pump's pipe and
        descriptors). True while a pump remains."""
        upstream = self.upstream
        if self.up_pump is not None and self.up_pump.quiet():
            self.up_pump.close()
            self.up_pump = None
            self.context.log_pump(self, UP, "back on the event loop")
            if not (self.client_eof or self.client_lost):
                self.transport.resume_reading()
        if self.down_pump is not None and self.down_pump.quiet():
            self.down_pump.close()
            self.down_pump = None
            self.context.log_pump(self, DOWN, "back on the event loop")
            if (
                upstream is not None
                and upstream.transport is not None
                and not (upstream.eof or upstream.lost)
            ):
                upstream.transport.resume_reading()
        return self.up_pump is not None or self.down_pump is not None

    def _start_pump(
        self,
        direction: str,
        src: asyncio.Transport,
        dst: asyncio.Transport,
        on_moved: Callable[[int], None],
        on_eof: Callable[[], object],
    ) -> SplicePump | None:
        # Only from a clean point: the Protocol relay has nothing buffered for `dst`, so no byte can pass
        # another, and neither connection is on its way out.
        if self.reason is not None or dst.get_write_buffer_size() or dst.is_closing() or src.is_closing():
            return None
        context = self.context
        if context.loop.time() < context.splice_retry_at:
            return None
        # A failed read is the source's connection failing, a failed write the destination's.
        src_broken, dst_broken = (
            (self._client_broken, self._gateway_broken)
            if direction == UP
            else (self._gateway_broken, self._client_broken)
        )
        try:
            pump = SplicePump.open(context.loop, src, dst, on_moved, on_eof, src_broken, dst_broken)
        except OSError as error:  # out of descriptors: the Protocol relay goes on; retry in a second
            context.splice_unavailable(error)
            return None
        src.pause_reading()  # the pump reads it from now on
        pump.start()
        context.pump_started(self, direction)
        return pump

    def _up_moved(self, count: int) -> None:
        self.rx_bytes += count

    def _down_moved(self, count: int) -> None:
        upstream = self.upstream
        if upstream is not None:
            upstream.rx_bytes += count

    def _client_broken(self, error: OSError) -> None:
        self._splice_failed(True)

    def _gateway_broken(self, error: OSError) -> None:
        self._splice_failed(False)

    def _splice_failed(self, client_side: bool) -> None:
        """A pump's read or write failed on one connection (a reset, as the transports report it): that side
        is closed and the reset carried to the other, as connection_lost does for the Protocol relay."""
        if self.reason is None:
            self.reason = DOWNSTREAM_RESET if client_side else UPSTREAM_RESET
        self._stop_pumps()
        upstream = self.upstream
        gateway = upstream.transport if upstream is not None and not upstream.lost else None
        client = None if self.client_lost else self.transport
        broken, other = (client, gateway) if client_side else (gateway, client)
        if other is not None:
            reset(other)
        if broken is not None:
            broken.abort()

    def _stop_pumps(self) -> None:
        # Before the transports close: the pumps' duplicate descriptors would keep the sockets open.
        if self.up_pump is not None:
            self.up_pump.close()
            self.up_pump = None
        if self.down_pump is not None:
            self.down_pump.close()
            self.down_pump = None

    # --- endings --------------------------------------------------------------------------------------

    def _answer_timeout(self) -> None:
        self.answer_timer = None
        timeout = self.context.config.connect_answer_timeout
        self._fail(ANSWER_TIMEOUT, f"gateway sent no CONNECT answer within {timeout:g}s")

    def _idle_tick(self) -> None:
        moved = self.rx_bytes + self.tx_bytes
        if moved != self.idle_mark:
            self.idle_mark = moved
            self.idle_quiet_ticks = 0
        else:
            self.idle_quiet_ticks += 1
            if self.idle_quiet_ticks >= _IDLE_TICKS:
                self.idle_timer = None
                self.abort(IDLE_TIMEOUT)
                return
        self.idle_timer = self.context.loop.call_later(
            self.context.config.idle_timeout / _IDLE_TICKS, self._idle_tick
        )

    def _fail(self, reason: str, detail: str) -> None:
        """Setup failed: the client gets a close, the failure its reason and a log line."""
        if self.reason is None:
            self.reason = reason
            self.context.log_failure(self, detail)
        self._close(reason)

    def _close(self, reason: str) -> None:
        """End both connections after flushing what is buffered."""
        if self.reason is None:
            self.reason = reason
        self._stop_pumps()
        if self.answer_timer is not None:
            self.answer_timer.cancel()
            self.answer_timer = None
        upstream = self.upstream
        if upstream is not None:
            upstream.handshake = None
            if upstream.transport is not None and not upstream.lost:
                upstream.transport.close()
        if not self.client_lost:
            self.transport.close()
        self._maybe_finish()

    def abort(self, reason: str) -> None:
        """End both connections at once, dropping buffered bytes (idle timeout, end of drain)."""
        if self.reason is None:
            self.reason = reason
        self._stop_pumps()
        if self.setup is not None and not self.setup.done():
            self.setup.cancel()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.lost:
            upstream.transport.abort()
        if not self.client_lost:
            self.transport.abort()
        self._maybe_finish()

    def _setup_done(self, _: asyncio.Task[None]) -> None:
        # Drop the finished task: it and its coroutine (frame included) would otherwise live as long as
        # the tunnel, a good part of an idle tunnel's memory.
        self.setup = None
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.ended_at or not self.client_lost:
            return
        upstream = self.upstream
        if upstream is not None and not upstream.lost:
            return
        if self.setup is not None and not self.setup.done():
            return  # _setup_done calls back
        self.ended_at = time.monotonic()
        for timer in (self.answer_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
        self.answer_timer = self.idle_timer = None
        self.pending = None
        self.context.tunnels.discard(self)
        self.context.observer.tunnel_closed(self)
