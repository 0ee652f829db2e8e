"""Running the proxy: the uvloop event loop, signals, and the order of start-up and shutdown.

Start: take the listener over from a running process (`--handover-socket`) or bind it, then serve.
SIGTERM/SIGINT: drain (not ready, still serving until a successor has the listener or the drain timeout),
exit 0; a second signal exits at once with 1. A process whose listener a successor took over drains its
tunnels, then waits for its SIGTERM (exiting earlier would have the kubelet restart it, and the restarted
process take the listener back). Background services (VIP reconciler, monitoring) are started and stopped
around the server through `Service`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from .config import ConfigError, ProxyConfig
from .eventloop import new_event_loop
from .handover import Record
from .handover.giver import Giver
from .handover.taker import Inherited, request_listener
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
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
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


def _not_recorded(role: str, result: str) -> None:
    pass


class KeepsVIP(Service, Protocol):
    # Why the VIP stays on exit despite --cleanup (the other process of a handover serves on it), or None.
    kept_for: str | None


@dataclass
class Rollout:
    """What a handover touches besides the listener."""

    path: str
    # Started only once the predecessor has freed the port (both want it: hostNetwork) - monitoring.
    port_service: Service | None = None
    # Frees that port when this process hands its listener over (blocking: run on a thread).
    free_port: Callable[[], None] | None = None
    vip: KeepsVIP | None = None
    record: Record = field(default=_not_recorded)


async def serve(
    server: ProxyServer,
    drain_timeout: float,
    services: list[Service] | None = None,
    on_serving: OnServing | None = None,
    rollout: Rollout | None = None,
) -> int:
    """Serve until a signal (or a successor has the listener), then drain. Returns the exit status."""
    loop = asyncio.get_running_loop()
    shutdown = Shutdown(loop)
    services = services or []
    started: list[Service] = []
    # The listener first: a listen address that cannot be used is a configuration error, reported before
    # any service (monitoring port, VIP reconciler) has started and would have to be undone.
    inherited, giver = await _take_or_bind(server, rollout)
    soft, _ = raise_fd_limit()
    log.info("file descriptor limit: %d", soft)
    try:
        for service in services:
            if inherited is not None and rollout is not None and service is rollout.port_service:
                continue
            await service.start()
            started.append(service)
        fit_tunnels_to_descriptors(server, soft)
        await server.start()
        shutdown.on_request.append(server.begin_drain)
        if inherited is not None and rollout is not None:
            await inherited.confirm()
            if rollout.port_service is not None:
                await rollout.port_service.start()
                started.append(rollout.port_service)
        if on_serving is not None:
            # Once bound: `apiproxy tunnel` probes the gateway here, then says it is ready (or raises).
            await on_serving(server)
        await _first_of(shutdown.requested, giver.given if giver is not None else None)
        aborted = await server.drain(drain_timeout, successor_expected=rollout is not None)
        log.info("drained; %d tunnels were cut at the deadline", aborted)
        if giver is not None:
            await giver.stop()
            if not shutdown.requested.is_set():
                log.info(
                    "the listener is with %s and the drain is over: waiting for SIGTERM", giver.successor
                )
                await shutdown.requested.wait()
    finally:
        if giver is not None:
            await giver.close()
        vip = rollout.vip if rollout is not None else None
        if (
            vip is not None
            and vip.kept_for is None
            and inherited is not None
            and inherited.predecessor_running()
        ):
            vip.kept_for = f"{inherited.predecessor}, which handed the listener over, still runs"
        for service in reversed(started):
            try:
                await service.stop()
            except Exception as error:
                log.error("stopping %s failed: %s", type(service).__name__, error)
        if inherited is not None:
            inherited.close()
    return 0


async def _take_or_bind(
    server: ProxyServer, rollout: Rollout | None
) -> tuple[Inherited | None, Giver | None]:
    """The listener from the process serving the handover socket, else bound here; then this process serves
    the handover socket itself, for its own successor."""
    if rollout is None:
        await server.bind()
        return None, None
    inherited = await request_listener(rollout.path, rollout.record)
    if inherited is not None:
        why = await server.adopt(inherited.listener)
        if why is not None:
            await inherited.decline(why)
            inherited = None
    if inherited is None:
        await server.bind()
    giver = Giver(rollout.path, server.listener_fileno, partial(_let_go, server, rollout), rollout.record)
    try:
        await giver.open()
    except OSError as error:
        if inherited is not None:
            await inherited.decline(f"its handover socket cannot be served ({error.strerror or error})")
        raise ConfigError(
            "--handover-socket",
            rollout.path,
            f"a path where a Unix socket can be created ({error.strerror or error})",
        ) from None
    return inherited, giver


async def _let_go(server: ProxyServer, rollout: Rollout, successor: str) -> None:
    """A successor accepts on the listener now: close this process's copy (the kernel socket lives on in the
    successor), keep the VIP it serves on, and free the monitoring port for it."""
    server.stop_accepting()
    if rollout.vip is not None:
        rollout.vip.kept_for = f"{successor} took the listener over"
    if rollout.free_port is not None:
        await asyncio.to_thread(rollout.free_port)


async def _first_of(*events: asyncio.Event | None) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events if event is not None]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def run_proxy(config: ProxyConfig, on_serving: OnServing | None = None) -> int:
    """The whole node proxy for `config`: listener, VIP reconciler and monitoring. Returns the exit status.

    Shared by `apiproxy run`, `apiproxy tunnel` and the `apiproxy-envoy` front end.
    """
    return run_loop(lambda: _main(config, on_serving))


async def _main(config: ProxyConfig, on_serving: OnServing | None = None) -> int:
    server = ProxyServer(config.listener, config.tunnel)
    services: list[Service] = []
    rollout = Rollout(config.handover_socket) if config.handover_socket is not None else None
    if config.monitoring is not None:
        from .monitoring import Monitoring

        monitoring = Monitoring(config, server)
        server.observer = monitoring.observer
        services.append(monitoring)
        if rollout is not None:
            from .handover.metrics import handover_counter

            rollout.port_service, rollout.free_port = monitoring, monitoring.endpoint.stop
            rollout.record = handover_counter(monitoring.native.registry)
    if config.vip is not None:
        from .vip.service import VIPService

        vip_service = VIPService(config.vip)
        services.append(vip_service)
        if config.monitoring is not None:
            monitoring.attach_vip(vip_service)
        if rollout is not None:
            rollout.vip = vip_service
    return await serve(server, config.drain_timeout, services, on_serving, rollout)
