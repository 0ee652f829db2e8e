"""Reaching the seed gateway: resolve its name (cached, refreshed, shared) and open a TCP connection
with timeout, keepalive and failover across the addresses the name resolves to.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from .addresses import host_port
from .config import DNSFamily, Endpoint, TunnelConfig

log = logging.getLogger(__name__)

SockAddr = tuple[Any, ...]
Address = tuple[int, SockAddr]  # (address family, sockaddr)

_FAMILIES = {DNSFamily.AUTO: socket.AF_UNSPEC, DNSFamily.V4: socket.AF_INET, DNSFamily.V6: socket.AF_INET6}


class UpstreamError(Exception):
    """No connection to the gateway. `reason` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ResolverStats:
    __slots__ = ("failures", "resolutions")

    def __init__(self) -> None:
        self.resolutions = 0
        self.failures = 0


class Resolver:
    """The gateway's addresses, resolved at most once per `refresh` seconds for all tunnels together.

    Like Envoy's LOGICAL_DNS cluster, a failed re-resolution keeps the last good answer, so a DNS outage
    does not cut off new tunnels to a gateway that is still there.
    """

    def __init__(self, endpoint: Endpoint, family: DNSFamily, refresh: float) -> None:
        self.endpoint = endpoint
        self.family = _FAMILIES[family]
        self.refresh = refresh
        self.stats = ResolverStats()
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
        self.stats.resolutions += 1
        try:
            infos = await loop.getaddrinfo(
                self.endpoint.host, self.endpoint.port, family=self.family, type=socket.SOCK_STREAM
            )
            addresses = _unique([(info[0], info[4]) for info in infos])
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, "no addresses")
        except (OSError, UnicodeError) as error:
            self.stats.failures += 1
            self._notify(False, started)
            if self._addresses:
                log.warning(
                    "resolving %s failed (%s); keeping the last good addresses", self.endpoint.host, error
                )
                self._expires = time.monotonic() + self.refresh
                return self._addresses
            raise UpstreamError(
                "dns_failure", f"cannot resolve gateway {self.endpoint.host}: {error}"
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


class Dialer:
    """Opens TCP connections to the gateway, trying each resolved address in turn.

    The address that last worked is tried first, so a dead first address costs one timeout once, not
    on every tunnel.
    """

    def __init__(self, config: TunnelConfig, resolver: Resolver) -> None:
        self.config = config
        self.resolver = resolver
        self._preferred: Address | None = None

    async def connect(
        self, protocol_factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.Transport, Address]:
        addresses = await self.resolver.resolve()
        preferred = self._preferred
        if preferred is not None and preferred in addresses and addresses[0] != preferred:
            addresses = [preferred, *(a for a in addresses if a != preferred)]
        loop = asyncio.get_running_loop()
        errors: list[UpstreamError] = []
        for address in addresses:
            try:
                transport = await self._dial(loop, protocol_factory, address)
            except UpstreamError as error:
                errors.append(error)
                continue
            self._preferred = address
            return transport, address
        if len(errors) == 1:
            raise errors[0]
        raise UpstreamError(errors[-1].reason, "; ".join(str(e) for e in errors))

    async def _dial(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.Protocol],
        address: Address,
    ) -> asyncio.Transport:
        """One TCP connection to one resolved address. The loop creates and connects the socket itself:
        with an IP literal uvloop skips getaddrinfo and libuv connects, sets TCP_NODELAY and registers the
        socket with no Python-level selector callbacks (fewer syscalls and objects per tunnel than
        connecting a socket of our own and handing it over)."""
        family, sockaddr = address
        host = sockaddr[0] if family != socket.AF_INET6 or not sockaddr[3] else f"{sockaddr[0]}%{sockaddr[3]}"
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                transport, _ = await loop.create_connection(
                    protocol_factory, host, sockaddr[1], family=family
                )
        except TimeoutError:
            raise UpstreamError(
                "connect_timeout",
                f"connecting to gateway {format_address(address)} timed out after {self.config.connect_timeout:g}s",
            ) from None
        except ConnectionRefusedError:
            raise UpstreamError(
                "connect_refused", f"gateway {format_address(address)} refused the connection"
            ) from None
        except OSError as error:  # unreachable, reset, or no descriptor for a socket (EMFILE)
            raise UpstreamError(
                "connect_error",
                f"cannot connect to gateway {format_address(address)}: {error.strerror or error}",
            ) from None
        try:
            _set_keepalive(transport, self.config)
        except OSError as error:  # the peer reset the connection already
            transport.abort()
            raise UpstreamError(
                "connect_error", f"cannot use the connection to gateway {format_address(address)}: {error}"
            ) from None
        return transport


def _set_keepalive(transport: asyncio.Transport, config: TunnelConfig) -> None:
    """TCP keepalive on the gateway connection. Through one socket object borrowing the descriptor: each
    call on uvloop's transport socket builds a socket object of its own, and each build costs a
    getsockname() system call."""
    handle = transport.get_extra_info("socket")
    if handle is None:
        return
    sock = socket.socket(handle.family, socket.SOCK_STREAM, 0, handle.fileno())
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(config.tcp_keepalive_time)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(config.tcp_keepalive_interval)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, config.tcp_keepalive_probes)
    finally:
        sock.detach()  # the descriptor stays the transport's
