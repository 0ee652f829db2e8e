"""The listener: accepts client connections, admits them up to the connection limit, and drains.

`ProxyServer` owns what all tunnels share (`TunnelContext`: configuration, the CONNECT request bytes,
the dialer, the set of open tunnels, the observer). Shutdown follows the usual order: stop accepting,
let open tunnels finish up to a deadline, abort the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

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

    @property
    def observer(self) -> TunnelObserver:
        return self.context.observer

    @observer.setter
    def observer(self, observer: TunnelObserver) -> None:
        self.context.observer = observer

    @property
    def bound(self) -> bool:
        return self._server is not None and self._server.is_serving()

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

    async def _listening_socket(self) -> socket.socket:
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

    def stop_accepting(self) -> None:
        """Close the listener; open tunnels go on. New connections meanwhile are refused as draining."""
        self.context.draining = True
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float) -> int:
        """Stop accepting, wait up to `timeout` s for open tunnels to end, abort the rest. Returns that count."""
        self.stop_accepting()
        context = self.context
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if context.tunnels:
            log.info("draining %d open tunnels (up to %gs)", len(context.tunnels), timeout)
        while context.tunnels and loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
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
