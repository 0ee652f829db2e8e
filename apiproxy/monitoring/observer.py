"""The TunnelObserver that feeds the native metrics, the Envoy-compatible figures and the access log.

Called on the event loop at a tunnel's open, establishment and close, never per chunk: a tunnel counts
its own bytes (`Tunnel.rx_bytes`/`tx_bytes`), and this observer publishes them at close, and every few
seconds for tunnels still open (`publish_open`), so a watch that lives for an hour still shows traffic.

Each call is a few integer additions, one `bisect` per histogram and, for the access log, a tuple handed to
the writer thread, which formats it there: the per-tunnel cost is part of the proxy's CPU per tunnel, and
everything that can wait for the scrape or for the writer thread does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..addresses import peer as format_peer
from ..reasons import CONNECT_FAILURES, Reason, Refusal
from ..tunnel import Tunnel, TunnelContext
from .access_log import Address, Record
from .envoy_stats import EnvoyStats
from .metrics import NativeMetrics

log = logging.getLogger("apiproxy.tunnel")

# Read once: an Enum member's lookup on its class is a Python-level descriptor call, per tunnel here.
_COMPLETED = Reason.COMPLETED


class MonitoringObserver:
    def __init__(
        self,
        context: TunnelContext,
        native: NativeMetrics,
        envoy: EnvoyStats | None,
        access_log: Callable[[Record], None] | None,
        cluster_name: str,
        local_address: Address | None,
    ) -> None:
        self.context = context
        self.native = native
        self.envoy = envoy
        self.access_log = access_log
        self.cluster_name = cluster_name
        # The listener's address is the downstream local address of every tunnel.
        self.local_address = local_address
        # A line per tunnel at -v: the level is set before monitoring starts, and asking the logger costs a
        # Python call per tunnel.
        self.log_tunnels = log.isEnabledFor(logging.DEBUG)

    # --- TunnelObserver -------------------------------------------------------------------------------

    def tunnel_opened(self, tunnel: Tunnel) -> None:
        self.native.opened += 1

    def tunnel_established(self, tunnel: Tunnel, seconds: float) -> None:
        self.native.connect_duration.observe(seconds)

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        rx, tx = tunnel.rx_bytes, tunnel.tx_bytes
        native = self.native
        # What publish_open has not counted yet (the tunnel keeps its own marks: no map per open tunnel).
        native.received_bytes += rx - tunnel.published_rx
        native.sent_bytes += tx - tunnel.published_tx
        reason = tunnel.reason or _COMPLETED
        native.closed[reason] += 1
        duration = tunnel.ended_at - tunnel.started_at
        connected = tunnel.connected_at
        # Envoy samples a connection's length for its cluster when the gateway was reached or tried.
        native.durations.observe(duration, connected > 0.0 or reason in CONNECT_FAILURES)
        envoy = self.envoy
        if envoy is not None and connected:
            envoy.cluster_upstream_cx_connect_ms.observe((connected - tunnel.started_at) * 1000)
            # The gateway's CONNECT answer, which Envoy's upstream byte counters include.
            upstream = tunnel.upstream
            if upstream is not None:
                envoy.answer_bytes += upstream.head_bytes
        if self.access_log is not None:
            address = tunnel.upstream_address
            if address is None and self.context.resolver.cached:
                address = self.context.resolver.cached[0]  # as Envoy, name the host even if it failed
            # TunnelRecord's fields, as a plain tuple: building a named tuple is a Python call.
            self.access_log((
                tunnel.started_wall, duration, tunnel.response_code, reason, rx, tx, tunnel.peer,
                self.local_address, None if address is None else address[1], self.cluster_name,
            ))  # fmt: skip
        if self.log_tunnels:
            log.debug(
                "tunnel from %s closed (%s): %d bytes in, %d out, %.3fs",
                format_peer(tunnel.peer),
                reason,
                rx,
                tx,
                duration,
            )

    def connection_rejected(self, reason: Refusal, peer: tuple[str, int] | None) -> None:
        self.native.rejected[reason] += 1

    # --- other sources --------------------------------------------------------------------------------

    def dns_resolved(self, ok: bool, seconds: float) -> None:
        native = self.native
        native.dns_resolutions += 1
        native.dns_duration.observe(seconds)
        if not ok:
            native.dns_failures += 1

    def vip_repaired(self, trigger: str) -> None:
        self.native.vip_repairs[trigger] += 1

    def publish_open(self) -> None:
        """Publish the bytes of tunnels still open (called every few seconds on the loop)."""
        native = self.native
        for tunnel in self.context.tunnels:
            rx, tx = tunnel.rx_bytes, tunnel.tx_bytes
            if rx != tunnel.published_rx or tx != tunnel.published_tx:
                native.received_bytes += rx - tunnel.published_rx
                native.sent_bytes += tx - tunnel.published_tx
                tunnel.published_rx, tunnel.published_tx = rx, tx
