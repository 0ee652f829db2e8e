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

from . import splice
from .addresses import peer as format_peer
from .config import ConfigError, ListenerConfig, TunnelConfig, UpstreamProtocol
from .handshake import build_connect_request
from .tunnel import DRAIN_TIMEOUT, Tunnel, TunnelObserver
from .upstream import Dialer, Resolver, format_address

log = logging.getLogger(__name__)

# Linux's IP_FREEBIND; Python 3.11's socket module lacks the constant.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
OVERFLOW = "overflow"
# A splice pump that moved nothing between two checks this far apart is closed: a direction keeps its
# pipe for 1-2 s after a burst, so a burst that resumes soon does not pay for a new one.
PUMP_CHECK_INTERVAL = 1.0
DRAINING = "draining"


class NullObserver:
    """Observes nothing; the default until metrics and logs are plugged in."""

    def tunnel_opened(self, tunnel: Tunnel) -> None:
        pass

    def tunnel_established(self, tunnel: Tunnel) -> None:
        pass

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        pass

    def connection_rejected(self, reason: str, peer: tuple[str, int] | None) -> None:
        pass


class TunnelContext:
    """What every tunnel of one listener shares."""

    def __init__(self, config: TunnelConfig, max_connections: int, observer: TunnelObserver) -> None:
        self.config = config
        self.max_connections = max_connections
        self.observer = observer
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set when the server starts
        self.resolver = Resolver(config.upstream, config.dns_family, config.dns_refresh)
        self.dialer = Dialer(config, self.resolver)
        self.proxy_protocol = config.upstream_protocol is UpstreamProtocol.PROXY_PROTOCOL_V2
        self.connect_request = (
            b""
            if self.proxy_protocol
            else build_connect_request(config.connect_authority, config.connect_headers)
        )
        self.tunnels: set[Tunnel] = set()
        self.draining = False
        self.splice = config.splice and splice.AVAILABLE
        # After a pump could not get its descriptors, tunnels stay on the Protocol relay until then.
        self.splice_retry_at = 0.0
        # Tunnels with a splice pump, checked every PUMP_CHECK_INTERVAL s for directions gone quiet.
        self.pumping: set[Tunnel] = set()
        self._pump_check: asyncio.TimerHandle | None = None

    def admission(self) -> str | None:
        """None to admit a new connection, else the reason it is refused."""
        if self.draining:
            return DRAINING
        if len(self.tunnels) >= self.max_connections:
            return OVERFLOW
        return None

    def pump_started(self, tunnel: Tunnel, direction: str) -> None:
        self.log_pump(tunnel, direction, "on a splice pump")
        self.pumping.add(tunnel)
        if self._pump_check is None:
            self._pump_check = self.loop.call_later(PUMP_CHECK_INTERVAL, self._check_pumps)

    def _check_pumps(self) -> None:
        self._pump_check = None
        for tunnel in list(self.pumping):
            if not tunnel.release_quiet_pumps():
                self.pumping.discard(tunnel)
        if self.pumping:
            self._pump_check = self.loop.call_later(PUMP_CHECK_INTERVAL, self._check_pumps)

    def splice_unavailable(self, error: OSError) -> None:
        self.splice_retry_at = self.loop.time() + 1.0
        log.warning("no splice pump for a bulk tunnel (%s); relaying through the event loop for now", error)

    def log_pump(self, tunnel: Tunnel, direction: str, what: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("tunnel from %s: %s %s", format_peer(tunnel.peer), direction, what)

    def log_failure(self, tunnel: Tunnel, detail: str) -> None:
        log.warning("tunnel from %s failed (%s): %s", format_peer(tunnel.peer), tunnel.reason, detail)


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
        self.context = TunnelContext(tunnel, listener.max_connections, observer or NullObserver())
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
        context.loop = loop
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
            tunnel.abort(DRAIN_TIMEOUT)
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

    def statistics(self) -> dict[str, Any]:
        context = self.context
        return {
            "open_tunnels": len(context.tunnels),
            "draining": context.draining,
            "gateway_addresses": [format_address(a) for a in context.resolver.cached],
        }
