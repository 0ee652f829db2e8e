"""Monitoring: the port-16910 endpoint (/metrics, /ready), the metrics behind it, and the access log.

`Monitoring` is a runtime service started before the listener. Its `observer` is the server's
TunnelObserver; `/ready` says 200 only while the listener is bound, the managed VIP (if any) is present
and the process is not draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import TYPE_CHECKING

from ..addresses import host_port
from ..config import ConfigError, ProxyConfig
from .access_log import FormatError, compile_format
from .envoy_stats import ENVOY_BUCKETS_MS, EnvoyStats, listener_address_label
from .http import BindError, MonitoringEndpoint
from .line_writer import LineWriter
from .metrics import NativeMetrics, text_exposition
from .observer import MonitoringObserver

if TYPE_CHECKING:
    from ..server import ProxyServer
    from ..vip.service import VIPService

__all__ = ["Monitoring"]

log = logging.getLogger(__name__)

# How often the bytes of long-lived tunnels are published (a watch can stay open for an hour).
PUBLISH_INTERVAL = 5.0


class Monitoring:
    def __init__(self, config: ProxyConfig, server: ProxyServer) -> None:
        monitoring = config.monitoring
        if monitoring is None:
            raise ValueError("Monitoring needs config.monitoring")
        self.config = monitoring
        self.server = server
        self.vip: VIPService | None = None
        listen = config.listener.listen
        envoy_names = monitoring.envoy_compatible_metrics
        self.native = NativeMetrics(ENVOY_BUCKETS_MS if envoy_names else ())
        self.envoy: EnvoyStats | None = None
        if envoy_names:
            self.envoy = EnvoyStats(
                self.native,
                monitoring.envoy_cluster_name,
                monitoring.envoy_stat_prefix,
                listener_address_label(listen.host, listen.port),
                connect_request_bytes=len(server.context.connect_request),
                resolved_at_start=config.tunnel.upstream.ip is not None,
            )
        self.access_log: LineWriter | None = None
        if monitoring.access_log_format is not None:
            try:
                format_line = compile_format(monitoring.access_log_format)
            except FormatError as error:
                raise ConfigError(
                    "access log format",
                    monitoring.access_log_format,
                    f"an Envoy access-log format with TCP commands only ({error})",
                ) from None
            # Records are formatted on the writer's thread, not on the event loop.
            self.access_log = LineWriter(sys.stdout, format_line)
        self.observer = MonitoringObserver(
            server.context,
            self.native,
            self.envoy,
            self.access_log.write if self.access_log is not None else None,
            monitoring.envoy_cluster_name,
            (listen.host, listen.port),
        )
        self.native.watch(
            active=lambda: len(server.context.tunnels), ready=lambda: 1.0 if self.readiness() is None else 0.0
        )
        self.endpoint = MonitoringEndpoint(
            [(a.host, a.port) for a in monitoring.addresses], self.readiness, self.exposition
        )
        self._publisher: asyncio.Task[None] | None = None

    def attach_vip(self, vip: VIPService) -> None:
        self.vip = vip
        vip.on_repair = self.observer.vip_repaired
        self.native.watch_vip(
            lambda: 1.0 if vip.present else 0.0, lambda: vip.passes, lambda: vip.failed_passes
        )

    # --- read by the endpoint's threads ---------------------------------------------------------------

    def readiness(self) -> str | None:
        """None when ready, else why not. Reads plain attributes only: safe off the event loop."""
        server = self.server
        if server.context.draining:
            return "draining"
        if not server.bound:
            return f"not listening on {server.listener_config.listen}"
        vip = self.vip
        if vip is not None and not vip.present:
            return "the VIP is not on its interface"
        return None

    def exposition(self) -> bytes:
        text = text_exposition(self.native.registry)
        if self.envoy is not None:
            text += self.envoy.render().encode()
        return text

    # --- service --------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.server.context.resolver.on_resolved = self.observer.dns_resolved
        try:
            self.endpoint.start()
        except BindError as error:
            host, port = error.address
            raise ConfigError(
                "--metrics-address",
                host_port(host, port),
                f"an address this host can listen on ({error.error.strerror or error.error})",
            ) from None
        if self.access_log is not None:
            self.access_log.start()
        self._publisher = asyncio.get_running_loop().create_task(self._publish_periodically())
        log.info("monitoring on %s (/metrics, /ready)", ", ".join(host_port(*a) for a in self.endpoint.bound))

    async def stop(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
        await asyncio.to_thread(self.endpoint.stop)
        if self.access_log is not None:
            await asyncio.to_thread(self.access_log.stop)

    async def _publish_periodically(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL)
            self.observer.publish_open()
