"""What a load run is asked to do, as plain frozen data that crosses into worker processes: the target (a
node proxy, or the seed gateway spoken to with CONNECT), the scenario, and how its units are shared out
over shards (`--shard I/N`, one per machine) and the worker processes of one machine.
"""

from __future__ import annotations

import math
import ssl
from dataclasses import asdict, dataclass, field
from typing import Any

import h11

from apiproxy.addresses import host_port
from apiproxy.handshake import build_connect_request

SCENARIOS = ("storm", "rate", "hold", "requests", "bulk")
DEFAULT_SNI = "kubernetes.default.svc"


@dataclass(frozen=True)
class Target:
    kind: str  # "node" (a node proxy, VIP:443) or "gateway" (the seed gateway, CONNECT)
    host: str  # as given
    port: int
    address: str  # `host` resolved once, at start: no DNS in the timed phases
    tls: bool = True
    sni: str = DEFAULT_SNI
    ca_file: str | None = None
    insecure: bool = False
    destination: str | None = None
    destination_headers: tuple[str, ...] = ("X-Gardener-Destination",)
    connect_authority: str | None = None
    path: str = "/version"
    # `--lab VARIANT`: the target is that part of the loopback topology started for the run.
    lab: str | None = None

    @property
    def endpoint(self) -> str:
        return host_port(self.host, self.port)

    def connect_request(self) -> bytes | None:
        """The CONNECT request a gateway target is sent (what apiproxy itself sends), else None."""
        if self.kind != "gateway" or self.destination is None:
            return None
        authority = self.connect_authority or host_port(self.host, 443)
        return build_connect_request(
            authority, [(name, self.destination) for name in self.destination_headers]
        )

    def http_request(self) -> h11.Request:
        """The request each tunnel sends once set up (and each request or probe after that)."""
        host = self.sni if self.tls else self.endpoint
        return h11.Request(method="GET", target=self.path,
                           headers=[("Host", host), ("User-Agent", "apiproxy-load"), ("Accept", "*/*")])  # fmt: skip

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def describe(self) -> str:
        security = (
            "plain" if not self.tls else f"TLS, SNI {self.sni}" + (", not verified" if self.insecure else "")
        )
        if self.lab is not None:
            what = "the lab's seed gateway" if self.kind == "gateway" else f"the lab's {self.lab} node proxy"
            return f"{what} on {self.endpoint} (plain HTTP backend)"
        if self.kind == "gateway":
            return f"seed gateway {self.endpoint} (CONNECT, {self.destination_headers[0]}: {self.destination}; {security})"
        return f"node proxy {self.endpoint} ({security})"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "destination_headers": list(self.destination_headers)}


@dataclass(frozen=True)
class Scenario:
    kind: str  # one of SCENARIOS
    count: int = 0  # storm, hold: tunnels
    rate: float = 0.0  # rate: tunnels/s; requests: requests/s
    duration: float = 0.0  # rate, hold, requests, bulk: seconds
    connections: int = 0  # requests, bulk: tunnels kept
    probe_interval: float = 5.0  # hold
    block_size: int = 64 * 1024  # bulk

    @property
    def unit(self) -> str:
        return "requests" if self.kind == "requests" else "tunnels"

    def units(self) -> int:
        """How many units the schedule holds, over all shards: tunnels, or requests for `requests`."""
        if self.kind in ("rate", "requests"):
            return math.ceil(self.rate * self.duration)
        if self.kind in ("storm", "hold"):
            return self.count
        return self.connections

    def tunnels(self) -> int:
        """Tunnels opened at once at the start (all shards): the storm, the held or kept tunnels."""
        return self.count if self.kind in ("storm", "hold") else self.connections

    def describe(self) -> str:
        text = {
            "storm": f"storm of {self.count:,} tunnels",
            "rate": f"{self.rate:g} tunnels/s for {self.duration:g} s (open loop)",
            "hold": f"{self.count:,} tunnels held for {self.duration:g} s, probed every {self.probe_interval:g} s",
            "requests": f"{self.rate:g} requests/s for {self.duration:g} s over {self.connections:,} tunnels (open loop)",
            "bulk": f"bulk echo over {self.connections:,} tunnels for {self.duration:g} s",
        }
        return text[self.kind]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class Plan:
    target: Target
    scenario: Scenario
    workers: int
    shard: Shard = field(default_factory=Shard)
    timeout: float = 10.0  # per tunnel setup, request or probe

    def share(self, total: int, worker: int) -> range:
        """The units of `total` that this shard's `worker` runs: interleaved, so each of N shards and W
        workers takes every (N*W)-th unit of one global schedule and together they run it all once."""
        return range(self.shard.index + worker * self.shard.count, total, self.shard.count * self.workers)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target.as_dict(), "scenario": self.scenario.as_dict(), "workers": self.workers,
                "shard": str(self.shard), "timeout_s": self.timeout}  # fmt: skip
