"""The listener: accepts client connections, admits them up to the connection limit, and drains.

`ProxyServer` owns what all tunnels share (`TunnelContext`: configuration, the CONNECT request bytes,
the dialer, the set of open tunnels, the observer). The drain starts at SIGTERM or when a successor has
taken the listener over, whichever comes first: the process says it is not ready, keeps accepting until
the listener is handed over or the deadline passes (on a node-local VIP nobody steers new connections
elsewhere, so refusing them protects nothing), lets open tunnels finish up to that deadline, and cuts the
rest. The listener's socket can also come from a predecessor (`adopt`) instead of `bind`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

from .addresses import peer
from .config import ConfigError, ListenerConfig, TunnelConfig
from .reasons import Reason
from .tunnel import Tunnel, TunnelContext, TunnelObserver

log = logging.getLogger(__name__)

# Linux's IP_FREEBIND; Python 3.11's socket module lacks the constant.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


class ProxyServer:
    def __init__(
        self,
        listener: ListenerConfig,
        tunnel: TunnelConfig,
        observer: TunnelObserver | None = None,
    ) -> None:
        self.listener_config = listener
        self.tunnel_config = tunnel
        # Exists before start(), so services started earlier (monitoring) can hook into it.
        per_source = listener.max_connections_per_source or max(1, listener.max_connections // 2)
        self.context = TunnelContext(tunnel, listener.max_connections, observer, per_source)
        self._server: asyncio.Server | None = None
        self._socket: socket.socket | None = None
        self.address: tuple[Any, ...] | None = None
        # Loop time the drain began (SIGTERM or handover); its deadline counts from here.
        self.drain_started: float | None = None

    @property
    def observer(self) -> TunnelObserver:
        return self.context.observer

    @observer.setter
    def observer(self, observer: TunnelObserver) -> None:
        self.context.observer = observer

    @property
    def bound(self) -> bool:
        """Accepting on the listener (until it is handed over or closed at the end of the drain)."""
        return self._server is not None and self._server.is_serving()

    def listener_fileno(self) -> int | None:
        """The listening socket's descriptor while accepting, for a handover; None once it is closed."""
        if not self.bound:
            return None
        assert self._server is not None
        return int(self._server.sockets[0].fileno())

    @property
    def tunnels(self) -> set[Tunnel]:
        return self.context.tunnels

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        context = self.context
        context.start(loop)
        sock = self._socket or await self._listening_socket()
        self._socket = None
        self._server = await loop.create_server(
            lambda: Tunnel(context), sock=sock, backlog=self.listener_config.backlog
        )
        self.address = sock.getsockname()
        log.info(
            "listening on %s, tunnelling to %s (%s)",
            self.listener_config.listen,
            self.tunnel_config.upstream,
            self.tunnel_config.upstream_protocol.value,
        )

    async def bind(self) -> None:
        """Resolve and bind the listen address (not yet accepting). Raises ConfigError if it can't."""
        if self._socket is None:
            self._socket = await self._listening_socket()
            self.address = self._socket.getsockname()

    async def adopt(self, sock: socket.socket) -> str | None:
        """Take `sock`, a listening socket handed over by a predecessor, as this server's listener, if it is
        what `bind` would have bound (family, address, port). Else say why not and leave it alone."""
        family, sockaddr = await self._listen_address()
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            bound = sock.getsockname()
        except OSError as error:
            return f"the socket received is unusable ({error.strerror or error})"
        if sock.family != family or sock.type != socket.SOCK_STREAM or not listening:
            return f"the socket received is not a listening TCP socket of the family of {self.listener_config.listen}"
        if ipaddress.ip_address(bound[0]) != ipaddress.ip_address(sockaddr[0]) or bound[1] != sockaddr[1]:
            return f"it listens on {peer(bound)}, this process on {peer(sockaddr)}"
        sock.setblocking(False)
        self._socket = sock
        self.address = bound
        return None

    async def _listen_address(self) -> tuple[int, tuple[Any, ...]]:
        """The family and socket address `--listen` resolves to (the first answer, as bind uses)."""
        listen = self.listener_config.listen
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as error:
            raise ConfigError(
                "--listen", str(listen), f"an address this host can resolve ({error.strerror})"
            ) from None
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr

    async def _listening_socket(self) -> socket.socket:
        listen = self.listener_config.listen
        family, sockaddr = await self._listen_address()
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.listener_config.freebind:
                level = socket.IPPROTO_IPV6 if family == socket.AF_INET6 else socket.IPPROTO_IP
                sock.setsockopt(level, IP_FREEBIND, 1)
            sock.bind(sockaddr)
        except OSError as error:
            sock.close()
            raise ConfigError(
                "--listen", str(listen), f"an address this host can listen on ({error.strerror or error})"
            ) from None
        sock.setblocking(False)
        return sock

    def begin_drain(self) -> None:
        """Not ready from now on (/ready 503); new tunnels are still admitted while the listener is open."""
        self.context.draining = True
        if self.drain_started is None:
            self.drain_started = asyncio.get_running_loop().time()

    def stop_accepting(self) -> None:
        """Close this process's copy of the listener (handed over, or the drain is over); open tunnels go on."""
        self.begin_drain()
        if self._server is not None:
            # close(2) only drops this process's descriptor: a successor holding the same socket goes on
            # accepting from its queue (a shutdown(2) would stop the socket for both; asyncio never calls it).
            self._server.close()

    async def drain(self, timeout: float, *, successor_expected: bool = False) -> int:
        """Drain up to `timeout` s from its start, then cut the tunnels left. Returns how many were cut.

        New tunnels are served while the listener is open. The drain ends early once no tunnel is left and
        no successor is awaited: none is expected (no handover socket), or one has taken the listener. A
        process that expects a successor keeps serving until then or the deadline, even with no tunnel open
        (`kubectl delete` of the pod: every new connection is still served until the deadline).
        """
        self.begin_drain()
        assert self.drain_started is not None
        context = self.context
        loop = asyncio.get_running_loop()
        deadline = self.drain_started + timeout
        if context.tunnels:
            left = round(max(0.0, deadline - loop.time()), 1)
            log.info("draining %d open tunnels (up to %gs)", len(context.tunnels), left)
        if self.bound:
            awaiting = "a successor takes the listener over" if successor_expected else "no tunnel is left"
            log.info("draining: accepting new tunnels until %s or the deadline", awaiting)
        while loop.time() < deadline:
            if not context.tunnels and not (successor_expected and self.bound):
                break
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        self.stop_accepting()
        remaining = list(context.tunnels)
        for tunnel in remaining:
            tunnel.end(Reason.DRAIN_TIMEOUT)
        if remaining:
            log.warning("closed %d tunnels still open at the end of the drain", len(remaining))
            # Let the transports report their loss so every tunnel is accounted for.
            for _ in range(10):
                if not context.tunnels:
                    break
                await asyncio.sleep(0.01)
        if self._server is not None:
            await self._server.wait_closed()
        return len(remaining)
