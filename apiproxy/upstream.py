"""Reaching the seed gateway: resolve its name (cached, refreshed, shared) and open a TCP connection
with timeout, keepalive and failover across the addresses the name resolves to.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

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

    async def resolve(self) -> list[Address]:
        if time.monotonic() < self._expires:
            return self._addresses
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
    until the dial has returned and `hand_over` gives it to its real protocol, so that an attempt the dialer
    abandons (a timeout, a failed keepalive option) never reaches a tunnel, and bytes the gateway sends
    before the dial returns are not lost. It reads at most once meanwhile.

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
        self.transport = cast(asyncio.Transport, transport)

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
        transport.set_protocol(cast(asyncio.BaseProtocol, protocol))
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


class Dialer:
    """Opens TCP connections to the gateway, trying each resolved address in turn.

    The address that last worked is tried first, so a dead first address costs one timeout once, not
    on every tunnel. Each attempt has a `Connecting` protocol of its own; the caller hands the winner's
    connection to its protocol.
    """

    def __init__(self, config: TunnelConfig, resolver: Resolver, read_view: memoryview | None = None) -> None:
        self.config = config
        self.resolver = resolver
        # Where gateway connections read (see Connecting): the tunnels' shared buffer, or one of its own.
        self.read_view = read_view if read_view is not None else memoryview(bytearray(READ_SIZE))
        self.loop: asyncio.AbstractEventLoop | None = None  # the running loop, from the first dial on
        self._preferred: Address | None = None
        self._keepalive = keepalive_options(config)

    async def connect(self) -> tuple[Connecting, Address]:
        addresses = await self.resolver.resolve()
        preferred = self._preferred
        if preferred is not None and preferred in addresses and addresses[0] != preferred:
            addresses = [preferred, *(a for a in addresses if a != preferred)]
        # Looked up once: asyncio.get_running_loop() makes a getpid() system call each time.
        loop = self.loop or asyncio.get_running_loop()
        self.loop = loop
        errors: list[UpstreamError] = []
        for address in addresses:
            try:
                connection = await self._dial(loop, address)
            except UpstreamError as error:
                errors.append(error)
                continue
            self._preferred = address
            return connection, address
        if len(errors) == 1:
            raise errors[0]
        raise UpstreamError(errors[-1].reason, "; ".join(str(e) for e in errors))

    async def _dial(self, loop: asyncio.AbstractEventLoop, address: Address) -> Connecting:
        """One TCP connection to one resolved address. The loop creates and connects the socket itself:
        with an IP literal uvloop skips getaddrinfo and libuv connects, sets TCP_NODELAY and registers the
        socket with no Python-level selector callbacks (fewer syscalls and objects per tunnel than
        connecting a socket of our own and handing it over)."""
        family, sockaddr = address
        host = sockaddr[0] if family != socket.AF_INET6 or not sockaddr[3] else f"{sockaddr[0]}%{sockaddr[3]}"
        where = format_address(address)
        # The timeout as a plain timer that cancels this task (asyncio.timeout() asks for the running loop
        # and the current task again, a getpid() system call each).
        task = asyncio.current_task(loop)
        assert task is not None
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            task.cancel()

        timer = loop.call_later(self.config.connect_timeout, expire)
        try:
            transport, connection = await loop.create_connection(
                lambda: Connecting(self.read_view), host, sockaddr[1], family=family
            )
        except asyncio.CancelledError:
            if not expired:
                raise  # the tunnel was ended meanwhile
            task.uncancel()
            raise UpstreamError(
                Reason.CONNECT_TIMEOUT,
                f"connecting to gateway {where} timed out after {self.config.connect_timeout:g}s",
            ) from None
        except ConnectionRefusedError:
            raise UpstreamError(Reason.CONNECT_REFUSED, f"gateway {where} refused the connection") from None
        except OSError as error:  # unreachable, reset, or no descriptor for a socket (EMFILE)
            raise UpstreamError(
                Reason.CONNECT_ERROR, f"cannot connect to gateway {where}: {error.strerror or error}"
            ) from None
        finally:
            timer.cancel()
        try:
            _set_keepalive(transport, self._keepalive)
        except OSError as error:  # the peer reset the connection already
            transport.abort()
            raise UpstreamError(
                Reason.CONNECT_ERROR, f"cannot use the connection to gateway {where}: {error}"
            ) from None
        return connection


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


def _set_keepalive(transport: asyncio.Transport, options: list[SocketOption]) -> None:
    """TCP keepalive on the gateway connection. Through one socket object borrowing the descriptor: each
    call on uvloop's transport socket builds a socket object of its own, and each build costs a
    getsockname() system call."""
    handle = transport.get_extra_info("socket")
    if handle is None:
        return
    sock = socket.socket(handle.family, socket.SOCK_STREAM, 0, handle.fileno())
    try:
        for level, name, value in options:
            sock.setsockopt(level, name, value)
    finally:
        sock.detach()  # the descriptor stays the transport's
