"""Reaching the seed gateway: resolve its name (cached, refreshed, shared) and open a TCP connection
with timeout and failover across the addresses the name resolves to; the keepalive options a gateway
connection gets (set by the tunnel context's sweep, see tunnel.KEEPALIVE_DELAY).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from .addresses import host_port
from .config import DNSFamily, Endpoint, TunnelConfig
from .reasons import Reason
from .splice import READ_SIZE

log = logging.getLogger(__name__)

SockAddr = tuple[Any, ...]
Address = tuple[int, SockAddr]  # (address family, sockaddr)

_FAMILIES = {DNSFamily.AUTO: socket.AF_UNSPEC, DNSFamily.V4: socket.AF_INET, DNSFamily.V6: socket.AF_INET6}


class UpstreamError(Exception):
    """No connection to the gateway. `reason` names the failure, `str()` says what happened."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Resolver:
    """The gateway's addresses, resolved at most once per `refresh` seconds for all tunnels together.

    Like Envoy's LOGICAL_DNS cluster, a failed re-resolution keeps the last good answer, so a DNS outage
    does not cut off new tunnels to a gateway that is still there.
    """

    def __init__(self, endpoint: Endpoint, family: DNSFamily, refresh: float) -> None:
        self.endpoint = endpoint
        self.family = _FAMILIES[family]
        self.refresh = refresh
        self.on_resolved: Callable[[bool, float], None] | None = None
        self._addresses: list[Address] = []
        self._expires = 0.0
        self._pending: asyncio.Future[list[Address]] | None = None
        ip = endpoint.ip
        if ip is not None:
            family_of_ip = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            sockaddr: SockAddr = (
                (str(ip), endpoint.port) if ip.version == 4 else (str(ip), endpoint.port, 0, 0)
            )
            self._addresses = [(family_of_ip, sockaddr)]
            self._expires = float("inf")

    @property
    def cached(self) -> list[Address]:
        return self._addresses

    def fresh(self) -> list[Address] | None:
        """The addresses, if they need no lookup now; else None (then `resolve()`)."""
        return self._addresses if time.monotonic() < self._expires else None

    async def resolve(self) -> list[Address]:
        addresses = self.fresh()
        if addresses is not None:
            return addresses
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._lookup())
            self._pending.add_done_callback(self._clear_pending)
        return await asyncio.shield(self._pending)

    def _clear_pending(self, _: asyncio.Future[list[Address]]) -> None:
        self._pending = None

    async def _lookup(self) -> list[Address]:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            infos = await loop.getaddrinfo(
                self.endpoint.host, self.endpoint.port, family=self.family, type=socket.SOCK_STREAM
            )
            addresses = _unique([(info[0], info[4]) for info in infos])
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, "no addresses")
        except (OSError, UnicodeError) as error:
            self._notify(False, started)
            if self._addresses:
                log.warning(
                    "resolving %s failed (%s); keeping the last good addresses", self.endpoint.host, error
                )
                self._expires = time.monotonic() + self.refresh
                return self._addresses
            raise UpstreamError(
                Reason.DNS_FAILURE, f"cannot resolve gateway {self.endpoint.host}: {error}"
            ) from None
        self._notify(True, started)
        if addresses != self._addresses:
            log.info(
                "gateway %s resolves to %s",
                self.endpoint.host,
                ", ".join(format_address(a) for a in addresses),
            )
        self._addresses = addresses
        self._expires = time.monotonic() + self.refresh
        return addresses

    def _notify(self, ok: bool, started: float) -> None:
        if self.on_resolved is not None:
            self.on_resolved(ok, time.monotonic() - started)


def _unique(addresses: list[Address]) -> list[Address]:
    seen: set[Address] = set()
    return [a for a in addresses if not (a in seen or seen.add(a))]  # type: ignore[func-returns-value]


def format_address(address: Address) -> str:
    return host_port(address[1][0], address[1][1])


class Receiver(Protocol):
    """What `Connecting.replay` gives the recorded events to: a protocol that also takes whole chunks
    through `received` (a BufferedProtocol need not have a data_received for uvloop to keep bound)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


class Connecting(asyncio.BufferedProtocol):
    """The protocol of a gateway connection while it is being dialled. It keeps what the connection reports
    until the dial has taken it and `hand_over` gives it to its real protocol, so that an attempt the dial
    abandons (its deadline, or the tunnel's end, fell after the connection was made) never reaches a tunnel,
    and bytes the gateway sends before the dial takes the connection are not lost. It reads at most once
    meanwhile.

    It reads through `view` (a BufferedProtocol: reads of at most its size): uvloop fixes a connection's
    read mode when it starts reading, so this is the mode the connection keeps after the hand-over, which
    bounds every read of the gateway (see tunnel.UpstreamSide). If uvloop still calls these read callbacks
    after the hand-over (a receiver that is not a BufferedProtocol), they pass the bytes on."""

    __slots__ = ("events", "receiver", "transport", "view")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.transport: asyncio.Transport | None = None
        self.receiver: Receiver | None = None
        # Each a chunk of bytes, _EOF, or the exception (or None) of connection_lost as _Lost.
        self.events: list[bytes | object] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's: no asyncio.Transport subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self.receiver is not None:
            self.receiver.received(data)
            return
        self.events.append(data)
        assert self.transport is not None
        self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.receiver is not None:
            return self.receiver.eof_received()
        self.events.append(_EOF)
        return True  # our sending direction stays open: the tunnel decides

    def connection_lost(self, exc: Exception | None) -> None:
        if self.receiver is not None:
            self.receiver.connection_lost(exc)
            return
        self.events.append(_Lost(exc))

    def hand_over(self, protocol: Receiver) -> asyncio.Transport:
        """Make `protocol` the connection's protocol (its connection_made is called). Then call `replay`."""
        transport = self.transport
        assert transport is not None
        self.receiver = protocol
        transport.set_protocol(protocol)  # type: ignore[arg-type]  # a protocol, structurally
        protocol.connection_made(transport)
        return transport

    def replay(self, protocol: Receiver) -> None:
        """Give `protocol` what arrived before `hand_over`. Reading resumes first, so a protocol that
        pauses while replaying stays paused."""
        events, self.events = self.events, []
        if not events:
            return
        transport = self.transport
        assert transport is not None
        if not transport.is_closing():
            transport.resume_reading()
        for event in events:
            if isinstance(event, bytes):
                protocol.received(event)
            elif event is _EOF:
                protocol.eof_received()
            else:
                assert isinstance(event, _Lost)
                protocol.connection_lost(event.exc)


_EOF = object()


class _Lost:
    __slots__ = ("exc",)

    def __init__(self, exc: Exception | None) -> None:
        self.exc = exc


# How often the dialer checks its attempts' timeouts: they fire up to this much late, never early.
TIMEOUT_TICK = 0.1


class DialReceiver(Protocol):
    """What a `Dial` reports its outcome to, exactly once."""

    def gateway_reached(self, connection: Connecting, address: Address) -> None: ...

    def gateway_unreached(self, error: BaseException | None) -> None:
        """`error`: an UpstreamError (no address worked), another exception (a bug), or None (cancelled)."""


class Dialer:
    """Opens TCP connections to the gateway, trying each resolved address in turn.

    The address that last worked is tried first, so a dead first address costs one timeout once, not
    on every tunnel. Each attempt has a `Connecting` protocol of its own; the receiver hands the winner's
    connection to its protocol. Attempts time out by a coarse sweep (TIMEOUT_TICK), not a timer each.
    """

    def __init__(self, config: TunnelConfig, resolver: Resolver, read_view: memoryview | None = None) -> None:
        self.config = config
        self.resolver = resolver
        # Where gateway connections read (see Connecting): the tunnels' shared buffer, or one of its own.
        self.read_view = read_view if read_view is not None else memoryview(bytearray(READ_SIZE))
        self.loop: asyncio.AbstractEventLoop | None = None  # the running loop, from the first dial on
        self.preferred: Address | None = None
        self._attempts: set[Dial] = set()  # dials with an attempt in flight, for the timeout sweep
        self._sweep: asyncio.TimerHandle | None = None

    def new_connection(self) -> Connecting:
        """The protocol factory of every attempt."""
        return Connecting(self.read_view)

    def dial(self, receiver: DialReceiver) -> Dial:
        """A dial for `receiver`, to be started with `start()`: the caller keeps it first, to `cancel()` it."""
        loop = self.loop
        if loop is None:
            # Looked up once: asyncio.get_running_loop() makes a getpid() system call each time.
            self.loop = loop = asyncio.get_running_loop()
        return Dial(self, loop, receiver)

    async def connect(self) -> tuple[Connecting, Address]:
        """One dial, awaited: for a single connection (the probe). Raises UpstreamError."""
        outcome: asyncio.Future[tuple[Connecting, Address]] = asyncio.get_running_loop().create_future()
        dial = self.dial(_Awaited(outcome))
        dial.start()
        try:
            return await outcome
        except asyncio.CancelledError:
            dial.cancel()
            raise

    def track(self, dial: Dial) -> None:
        self._attempts.add(dial)
        if self._sweep is None:
            self._sweep = dial.loop.call_later(TIMEOUT_TICK, self._expire)

    def untrack(self, dial: Dial) -> None:
        self._attempts.discard(dial)

    def _expire(self) -> None:
        self._sweep = None
        assert self.loop is not None
        now = self.loop.time()
        for dial in [dial for dial in self._attempts if dial.deadline <= now]:
            self._attempts.discard(dial)
            dial.expire()
        if self._attempts:
            self._sweep = self.loop.call_later(TIMEOUT_TICK, self._expire)


class Dial:
    """One way to the gateway: each resolved address in turn (the one that last worked first) until one
    connects; then, or when none did, or once cancelled, the receiver hears of it, once.

    No Task per tunnel: the loop's `create_connection` coroutine is driven from the done callbacks of the
    futures it waits for, as a Task would drive it, and an attempt's timeout is the dialer's sweep. A
    timeout or cancel cancels the future the coroutine waits for, so the coroutine unwinds (closing a
    connection it made) before the next attempt or the report. An attempt abandoned after its connection
    was made (the deadline fell between) closes that connection: only the reported one reaches a tunnel.

    With an IP literal, uvloop's create_connection skips getaddrinfo, and libuv connects, sets TCP_NODELAY
    and registers the socket with no Python-level selector callbacks (fewer system calls and objects per
    tunnel than connecting a socket of our own and handing it over)."""

    __slots__ = (
        "addresses",
        "cancelled",
        "coro",
        "deadline",
        "dialer",
        "errors",
        "index",
        "loop",
        "receiver",
        "timed_out",
        "waiting",
    )

    def __init__(self, dialer: Dialer, loop: asyncio.AbstractEventLoop, receiver: DialReceiver) -> None:
        self.dialer = dialer
        self.loop = loop
        self.receiver: DialReceiver | None = receiver  # None once told
        self.addresses: list[Address] = []
        self.index = -1
        self.errors: list[UpstreamError] = []
        self.coro: Coroutine[Any, Any, tuple[asyncio.Transport, Connecting]] | None = None
        self.waiting: asyncio.Future[Any] | None = None  # what the coroutine (or the lookup) waits for
        self.deadline = 0.0
        self.cancelled = False
        self.timed_out = False

    def start(self) -> None:
        resolver = self.dialer.resolver
        addresses = resolver.fresh()
        if addresses is not None:
            self._begin(addresses)
            return
        # A lookup is due (once per refresh interval, shared): wait for it.
        lookup = self.waiting = asyncio.ensure_future(resolver.resolve(), loop=self.loop)
        lookup.add_done_callback(self._resolved)

    def cancel(self) -> None:
        """Give up (the tunnel ended). The receiver hears `gateway_unreached(None)` once the attempt has
        unwound."""
        if self.cancelled or self.receiver is None:
            return
        self.cancelled = True
        if self.waiting is not None:
            self.waiting.cancel()

    def expire(self) -> None:
        """The attempt's deadline passed (the dialer's sweep): on to the next address."""
        self.timed_out = True
        if self.waiting is not None:
            self.waiting.cancel()

    def _resolved(self, lookup: asyncio.Future[list[Address]]) -> None:
        self.waiting = None
        if self.cancelled:
            self._report(None)
            return
        try:
            addresses = lookup.result()
        except Exception as error:  # UpstreamError: the name did not resolve
            self._report(error)
            return
        self._begin(addresses)

    def _begin(self, addresses: list[Address]) -> None:
        preferred = self.dialer.preferred
        if preferred is not None and addresses[0] != preferred and preferred in addresses:
            addresses = [preferred, *(a for a in addresses if a != preferred)]
        self.addresses = addresses
        self._next()

    def _next(self) -> None:
        self.index += 1
        if self.index >= len(self.addresses):
            errors = self.errors
            if len(errors) == 1:
                self._report(errors[0])
            else:
                self._report(UpstreamError(errors[-1].reason, "; ".join(str(e) for e in errors)))
            return
        family, sockaddr = self.addresses[self.index]
        host = sockaddr[0] if family != socket.AF_INET6 or not sockaddr[3] else f"{sockaddr[0]}%{sockaddr[3]}"
        dialer, loop = self.dialer, self.loop
        self.timed_out = False
        self.deadline = loop.time() + dialer.config.connect_timeout
        dialer.track(self)
        self.coro = loop.create_connection(dialer.new_connection, host, sockaddr[1], family=family)
        self._step()

    def _step(self, _: object = None) -> None:
        """Run the coroutine up to its next wait, or to its end."""
        self.waiting = None
        coro = self.coro
        assert coro is not None
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            self._connected(done.value)
        except (asyncio.CancelledError, OSError) as error:
            # The future the coroutine waited for holds this exception, whose traceback holds the
            # coroutine's frame, which holds that future: a cycle, and this frame (with the dial) in it.
            error.__traceback__ = None
            self._failed(self._upstream_error(error))
        except Exception as error:  # a bug: reported with its traceback
            self.dialer.untrack(self)
            self._report(error)
        else:
            if waiting is None:  # a bare yield (asyncio.sleep(0)): go on with the next iteration
                self.loop.call_soon(self._step)
                return
            self.waiting = waiting
            waiting.add_done_callback(self._step)
            if self.cancelled or self.timed_out:  # given up while the coroutine ran: unwind it
                waiting.cancel()

    def _connected(self, made: tuple[asyncio.Transport, Connecting]) -> None:
        transport, connection = made
        self.dialer.untrack(self)
        self.coro = None
        if self.cancelled or self.timed_out:  # the end or the deadline came after the connection was made
            transport.abort()
            self._failed(None)
            return
        address = self.addresses[self.index]
        self.dialer.preferred = address
        receiver = self.receiver
        self.receiver = None
        assert receiver is not None
        receiver.gateway_reached(connection, address)

    def _upstream_error(self, error: BaseException) -> UpstreamError | None:
        """What a failed attempt's exception means; None: cancelled (the tunnel ended, or the deadline)."""
        if isinstance(error, asyncio.CancelledError):
            return None
        if isinstance(error, ConnectionRefusedError):
            return UpstreamError(Reason.CONNECT_REFUSED, f"gateway {self._where()} refused the connection")
        assert isinstance(error, OSError)  # unreachable, reset, or no descriptor for a socket (EMFILE)
        return UpstreamError(
            Reason.CONNECT_ERROR, f"cannot connect to gateway {self._where()}: {error.strerror or error}"
        )

    def _failed(self, error: UpstreamError | None) -> None:
        """The attempt is over without a connection; `error` None: cancelled or timed out."""
        self.dialer.untrack(self)
        self.coro = None
        if self.cancelled:
            self._report(None)
            return
        if error is None:
            error = UpstreamError(
                Reason.CONNECT_TIMEOUT,
                f"connecting to gateway {self._where()} timed out after {self.dialer.config.connect_timeout:g}s",
            )
        self.errors.append(error)
        self._next()

    def _report(self, error: BaseException | None) -> None:
        receiver = self.receiver
        self.receiver = None
        if receiver is not None:
            receiver.gateway_unreached(error)

    def _where(self) -> str:
        return format_address(self.addresses[self.index])


class _Awaited:
    """A DialReceiver that resolves a future (Dialer.connect)."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: asyncio.Future[tuple[Connecting, Address]]) -> None:
        self.outcome = outcome

    def gateway_reached(self, connection: Connecting, address: Address) -> None:
        if self.outcome.done():  # the caller was cancelled meanwhile
            assert connection.transport is not None
            connection.transport.abort()
        else:
            self.outcome.set_result((connection, address))

    def gateway_unreached(self, error: BaseException | None) -> None:
        if self.outcome.done():
            return
        if error is None:
            self.outcome.cancel()
        else:
            self.outcome.set_exception(error)


SocketOption = tuple[int, int, int]  # level, name, value

# The kernel's keepalive defaults of this network namespace, by option.
_KEEPALIVE_SYSCTLS = {
    socket.TCP_KEEPIDLE: "/proc/sys/net/ipv4/tcp_keepalive_time",
    socket.TCP_KEEPINTVL: "/proc/sys/net/ipv4/tcp_keepalive_intvl",
    socket.TCP_KEEPCNT: "/proc/sys/net/ipv4/tcp_keepalive_probes",
}


def keepalive_options(config: TunnelConfig) -> list[SocketOption]:
    """The setsockopt calls that give a gateway connection the configured keepalive: SO_KEEPALIVE, and each
    timing only where it differs from the kernel's default (read once here; Gardener's idle time 7200 s
    and 9 probes are Linux's defaults), saving system calls on every tunnel."""
    wanted = {
        socket.TCP_KEEPIDLE: max(1, int(config.tcp_keepalive_time)),
        socket.TCP_KEEPINTVL: max(1, int(config.tcp_keepalive_interval)),
        socket.TCP_KEEPCNT: config.tcp_keepalive_probes,
    }
    options: list[SocketOption] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in wanted.items():
        try:
            with open(_KEEPALIVE_SYSCTLS[name]) as sysctl:
                default: int | None = int(sysctl.read())
        except (OSError, ValueError):
            default = None
        if value != default:
            options.append((socket.IPPROTO_TCP, name, value))
    return options


def set_keepalive(transport: asyncio.Transport, options: list[SocketOption]) -> None:
    """TCP keepalive on a gateway connection. Through one socket object borrowing the descriptor: each
    call on uvloop's transport socket builds a socket object of its own, and each build costs a
    getsockname() system call. Raises OSError if the connection is broken."""
    handle = transport.get_extra_info("socket")
    if handle is None:
        return
    sock = socket.socket(handle.family, socket.SOCK_STREAM, 0, handle.fileno())
    try:
        for level, name, value in options:
            sock.setsockopt(level, name, value)
    finally:
        sock.detach()  # the descriptor stays the transport's
