"""The TunnelObserver that feeds the native metrics, the Envoy-compatible figures and the access log.

Called on the event loop at a tunnel's open, establishment and close, never per chunk: a tunnel counts
its own bytes (`Tunnel.rx_bytes`/`tx_bytes`), and this observer publishes them at close, and every few
seconds for tunnels still open (`publish_open`), so a watch that lives for an hour still shows traffic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter

from ..addresses import peer as format_peer
from ..reasons import CONNECT_FAILURES, Reason, Refusal
from ..tunnel import Tunnel, TunnelContext
from .access_log import TunnelRecord
from .envoy_stats import EnvoyStats
from .metrics import NativeMetrics

log = logging.getLogger("apiproxy.tunnel")


class MonitoringObserver:
    def __init__(
        self,
        context: TunnelContext,
        native: NativeMetrics,
        envoy: EnvoyStats | None,
        access_log: Callable[[TunnelRecord], None] | None,
        cluster_name: str,
        local_address: tuple[str, int] | None,
    ) -> None:
        self.context = context
        self.native = native
        self.envoy = envoy
        self.access_log = access_log
        self.cluster_name = cluster_name
        # The listener's address is the downstream local address of every tunnel.
        self.local_address = local_address
        # Bytes already published of tunnels still open: tunnel -> (rx, tx).
        self._published: dict[Tunnel, tuple[int, int]] = {}
        self._closed_by_reason: dict[Reason, Counter] = {}

    # --- TunnelObserver -------------------------------------------------------------------------------

    def tunnel_opened(self, tunnel: Tunnel) -> None:
        self.native.tunnels_opened.inc()
        envoy = self.envoy
        if envoy is not None:
            envoy.listener_downstream_cx_total += 1
            envoy.tcp_downstream_cx_total += 1

    def tunnel_established(self, tunnel: Tunnel) -> None:
        self.native.connect_duration.observe(tunnel.established_at - tunnel.started_at)

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        rx, tx = tunnel.rx_bytes, tunnel.tx_bytes
        published_rx, published_tx = self._published.pop(tunnel, (0, 0))
        self._publish_bytes(rx - published_rx, tx - published_tx)
        reason = tunnel.reason or Reason.COMPLETED
        native = self.native
        closed = self._closed_by_reason.get(reason)
        if closed is None:
            closed = native.tunnels_closed.labels(reason.outcome, reason)
            self._closed_by_reason[reason] = closed
        closed.inc()
        duration = tunnel.ended_at - tunnel.started_at
        native.tunnel_duration.observe(duration)
        envoy = self.envoy
        if envoy is not None:
            self._envoy_closed(envoy, tunnel, reason, duration)
        if self.access_log is not None:
            self.access_log(self._record(tunnel, reason, duration))
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "tunnel from %s closed (%s): %d bytes in, %d out, %.3fs",
                format_peer(tunnel.peer),
                reason,
                rx,
                tx,
                duration,
            )

    def connection_rejected(self, reason: Refusal, peer: tuple[str, int] | None) -> None:
        self.native.connections_rejected.labels(reason).inc()
        # Envoy counts a connection over the listener's limit only here (not in cx_total); while it
        # drains, its listener is closed and sees nothing. A source over its own cap is an overflow too.
        if reason is not Refusal.DRAINING and self.envoy is not None:
            self.envoy.listener_downstream_cx_overflow += 1

    # --- other sources --------------------------------------------------------------------------------

    def dns_resolved(self, ok: bool, seconds: float) -> None:
        self.native.dns_resolutions.inc()
        self.native.dns_duration.observe(seconds)
        if not ok:
            self.native.dns_failures.inc()
        if self.envoy is not None:
            self.envoy.cluster_update_attempt += 1
            if not ok:
                self.envoy.cluster_update_failure += 1

    def vip_repaired(self, trigger: str) -> None:
        self.native.vip_repairs.labels(trigger).inc()

    def publish_open(self) -> None:
        """Publish the bytes of tunnels still open (called every few seconds on the loop)."""
        published = self._published
        for tunnel in self.context.tunnels:
            rx, tx = tunnel.rx_bytes, tunnel.tx_bytes
            before_rx, before_tx = published.get(tunnel, (0, 0))
            if rx != before_rx or tx != before_tx:
                published[tunnel] = (rx, tx)
                self._publish_bytes(rx - before_rx, tx - before_tx)

    # --- helpers --------------------------------------------------------------------------------------

    def _publish_bytes(self, rx: int, tx: int) -> None:
        if rx:
            self.native.received_bytes.inc(rx)
        if tx:
            self.native.sent_bytes.inc(tx)
        envoy = self.envoy
        if envoy is not None:
            envoy.tcp_downstream_cx_rx_bytes_total += rx
            envoy.tcp_downstream_cx_tx_bytes_total += tx
            envoy.cluster_upstream_cx_tx_bytes_total += rx
            envoy.cluster_upstream_cx_rx_bytes_total += tx

    def _envoy_closed(self, envoy: EnvoyStats, tunnel: Tunnel, reason: Reason, duration: float) -> None:
        envoy.listener_downstream_cx_destroy += 1
        envoy.listener_downstream_cx_length_ms.observe(duration * 1000)
        if tunnel.connected_at:
            envoy.cluster_upstream_cx_connect_ms.observe((tunnel.connected_at - tunnel.started_at) * 1000)
            envoy.cluster_upstream_cx_length_ms.observe(duration * 1000)
            # The CONNECT head both ways, which Envoy's upstream byte counters include.
            upstream = tunnel.upstream
            if upstream is not None:
                envoy.cluster_upstream_cx_rx_bytes_total += upstream.head_bytes
            envoy.cluster_upstream_cx_tx_bytes_total += len(self.context.connect_request)
        elif reason in CONNECT_FAILURES:
            envoy.cluster_upstream_cx_length_ms.observe(duration * 1000)
        elif reason is Reason.DNS_FAILURE:
            envoy.cluster_upstream_cx_none_healthy += 1

    def _record(self, tunnel: Tunnel, reason: Reason, duration: float) -> TunnelRecord:
        upstream: tuple[str, int] | None = None
        address = tunnel.upstream_address
        if address is None and self.context.resolver.cached:
            address = self.context.resolver.cached[0]  # as Envoy, name the host even if it failed
        if address is not None:
            upstream = (str(address[1][0]), int(address[1][1]))
        return TunnelRecord(
            start_time=tunnel.started_wall,
            duration=duration,
            response_code=tunnel.response_code,
            reason=reason,
            bytes_received=tunnel.rx_bytes,
            bytes_sent=tunnel.tx_bytes,
            downstream_remote=tunnel.peer,
            downstream_local=self.local_address,
            upstream_host=upstream,
            upstream_cluster=self.cluster_name,
        )
