"""Running the proxy: the uvloop event loop, signals, and the order of start-up and shutdown.

Start: bind the listener, then serve. SIGTERM/SIGINT: stop accepting, drain open tunnels up to the drain
timeout, exit 0; a second signal exits at once with 1. Background services (VIP reconciler, monitoring)
are started and stopped around the server through `Service`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import uvloop

from .config import ProxyConfig
from .server import ProxyServer

log = logging.getLogger(__name__)

# Called once the listener is bound, before waiting for a signal; an exception it raises ends the run.
OnServing = Callable[[ProxyServer], Awaitable[None]]


class Service(Protocol):
    """Something that lives beside the server for the life of the process."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def run_loop(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run `main` on a uvloop loop (not a global policy: helper threads may run stdlib loops)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit: each tunnel holds two descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


# Descriptors kept free for what is not a tunnel: monitoring connections, DNS lookups, splice pumps.
RESERVED_DESCRIPTORS = 16


def fit_tunnels_to_descriptors(server: ProxyServer, limit: int) -> None:
    """Admit no more tunnels than there are descriptors for (two each): a client admitted beyond that
    holds a descriptor while its gateway connection fails, and starves tunnels that could have worked."""
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        return  # not Linux: the configured limit stands
    fit = max(1, (limit - in_use - RESERVED_DESCRIPTORS) // 2)
    context = server.context
    if fit < context.max_connections:
        log.warning(
            "the file descriptor limit (%d, %d in use) leaves room for %d tunnels: at most %d at once instead "
            "of %d (--max-connections)",
            limit, in_use, fit, fit, context.max_connections,
        )  # fmt: skip
        context.max_connections = fit


class Shutdown:
    """Turns the first SIGTERM/SIGINT into a graceful stop and a second into an immediate exit(1)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.requested = asyncio.Event()
        self.signals = 0
        self.on_request: list[Callable[[], None]] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._signal, signum)

    def _signal(self, signum: int) -> None:
        self.signals += 1
        if self.signals > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(1)
        log.info("%s: draining", signal.Signals(signum).name)
        for callback in self.on_request:
            callback()
        self.requested.set()


async def serve(
    server: ProxyServer,
    drain_timeout: float,
    services: list[Service] | None = None,
    on_serving: OnServing | None = None,
) -> int:
    """Serve until a signal, then drain. Returns the exit status."""
    loop = asyncio.get_running_loop()
    shutdown = Shutdown(loop)
    services = services or []
    started: list[Service] = []
    # Bind first: a listen address that cannot be used is a configuration error, reported before any
    # service (monitoring port, VIP reconciler) has started and would have to be undone.
    await server.bind()
    soft, _ = raise_fd_limit()
    log.info("file descriptor limit: %d", soft)
    try:
        for service in services:
            await service.start()
            started.append(service)
        fit_tunnels_to_descriptors(server, soft)
        await server.start()
        shutdown.on_request.append(server.stop_accepting)
        if on_serving is not None:
            # Once bound: `apiproxy tunnel` probes the gateway here, then says it is ready (or raises).
            await on_serving(server)
        await shutdown.requested.wait()
        aborted = await server.drain(drain_timeout)
        log.info("drained; %d tunnels were cut at the deadline", aborted)
    finally:
        for service in reversed(started):
            try:
                await service.stop()
            except Exception as error:
                log.error("stopping %s failed: %s", type(service).__name__, error)
    return 0


def run_proxy(config: ProxyConfig, on_serving: OnServing | None = None) -> int:
    """The whole node proxy for `config`: listener, VIP reconciler and monitoring. Returns the exit status.

    Shared by `apiproxy run`, `apiproxy tunnel` and the `apiproxy-envoy` front end.
    """
    return run_loop(lambda: _main(config, on_serving))


async def _main(config: ProxyConfig, on_serving: OnServing | None = None) -> int:
    server = ProxyServer(config.listener, config.tunnel)
    services: list[Service] = []
    vip_service = None
    if config.monitoring is not None:
        from .monitoring import Monitoring

        monitoring = Monitoring(config, server)
        server.observer = monitoring.observer
        services.append(monitoring)
    if config.vip is not None:
        from .vip.service import VIPService

        vip_service = VIPService(config.vip)
        services.append(vip_service)
        if config.monitoring is not None:
            monitoring.attach_vip(vip_service)
    return await serve(server, config.drain_timeout, services, on_serving)
