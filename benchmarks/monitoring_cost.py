"""What monitoring (metrics and the access log) costs per tunnel, as an A/B in one process image:
`python -m benchmarks.monitoring_cost [--mode observer|tunnels] [--callgrind]`.

- `observer`: N tunnel records (real `Tunnel` objects with realistic figures) through the observer's
  open/established/closed calls, the access-log writer's work (formatting, writing to /dev/null) done
  every 256 tunnels on the same thread; the B side is the `NullObserver` with the same records.
- `tunnels`: N real tunnels on loopback, in this process: a client, the proxy (`ProxyServer`, with or
  without `Monitoring` started as `apiproxy run` starts it: endpoint threads, access-log thread) and a
  stand-in CONNECT gateway that answers 200 and then one HTTP answer per request.

Without `--callgrind` each side runs `--repeats` times in fresh processes, interleaved, and the median
CPU time per tunnel is printed (the machine is shared: a cross-check only). With `--callgrind` each side
runs under `valgrind --tool=callgrind` at two sizes, and the difference of instruction counts divided by
the difference of tunnels is the cost per tunnel without start-up: deterministic, unlike time. Only
user-space instructions count (system calls are the kernel's), every thread's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DESTINATION = "outbound|443||kube-apiserver.shoot--bench--cost.svc.cluster.local"
REQUEST = b"GET /version HTTP/1.1\r\nHost: kubernetes.default.svc\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
FLUSH_EVERY = 256  # tunnels between the access-log writer's turns in observer mode


def _config(listen: tuple[str, int], upstream: tuple[str, int], metrics_port: int | None) -> Any:
    from apiproxy.config import Endpoint, ListenerConfig, MonitoringConfig, ProxyConfig, TunnelConfig

    return ProxyConfig(
        listener=ListenerConfig(listen=Endpoint(*listen), max_connections=10000),
        tunnel=TunnelConfig(
            upstream=Endpoint(*upstream),
            connect_authority=f"{upstream[0]}:443",
            connect_headers=(("X-Gardener-Destination", DESTINATION),),
        ),
        monitoring=None
        if metrics_port is None
        else MonitoringConfig(addresses=(Endpoint("127.0.0.1", metrics_port),)),
    )


# --- observer mode --------------------------------------------------------------------------------------


class _Client:
    """A client connection as far as the observer asks: its address."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default


def observer_run(tunnels: int, monitoring: bool) -> float:
    """CPU seconds for `tunnels` records through the observer (or the NullObserver)."""
    from apiproxy.config import parse_endpoint  # noqa: F401  (imports what `apiproxy run` has loaded)
    from apiproxy.reasons import Reason
    from apiproxy.server import ProxyServer
    from apiproxy.tunnel import NullObserver, Phase, Tunnel, UpstreamSide

    config = _config(("240.168.102.23", 443), ("10.250.0.9", 8443), 16910 if monitoring else None)
    server = ProxyServer(config.listener, config.tunnel)
    context = server.context
    writer = None
    if monitoring:
        from apiproxy.monitoring import Monitoring

        service = Monitoring(config, server)
        observer: Any = service.observer
        writer = service.access_log
        if writer is not None:
            writer.stream = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the run)
    else:
        observer = NullObserver()
    # The gateway's address as the dialer records it: (family, sockaddr).
    gateway = (2, ("10.250.0.9", 8443))
    wall = 1_790_000_000.0
    started = time.process_time()
    for n in range(tunnels):
        tunnel = Tunnel(context)
        tunnel.transport = _Client(("10.0.3.7", 30000 + n % 30000))  # type: ignore[assignment]
        tunnel.started_wall = wall + n * 0.0003  # ~3,000 tunnels/s: the log's second changes rarely
        tunnel.started_at = 1000.0 + n * 0.0003
        observer.tunnel_opened(tunnel)
        upstream = UpstreamSide(tunnel)
        upstream.head_bytes = 19
        tunnel.upstream = upstream
        tunnel.upstream_address = gateway
        tunnel.connected_at = tunnel.started_at + 0.0004
        tunnel.phase = Phase.RELAYING
        observer.tunnel_established(tunnel, 0.0009)
        tunnel.rx_bytes = 517 + n % 100
        upstream.rx_bytes = 4096 + n % 1000
        tunnel.reason = Reason.COMPLETED
        tunnel.response_code = 200
        tunnel.ended_at = tunnel.started_at + 0.0042
        tunnel.phase = Phase.ENDED
        observer.tunnel_closed(tunnel)
        if writer is not None and n % FLUSH_EVERY == FLUSH_EVERY - 1:
            writer.flush()
    if writer is not None:
        writer.flush()
    return time.process_time() - started


# --- tunnels mode ---------------------------------------------------------------------------------------


class _Gateway(asyncio.Protocol):
    """A CONNECT gateway and backend in one: 200 to the CONNECT, then ANSWER to each request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.connected = False
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.pending += data
        while b"\r\n\r\n" in self.pending:
            _, self.pending = self.pending.split(b"\r\n\r\n", 1)
            if self.connected:
                self.transport.write(ANSWER)
            else:
                self.connected = True
                self.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")


async def _client(port: int, count: int) -> None:
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        received = b""
        while not received.endswith(b"ok"):
            data = await reader.read(4096)
            if not data:
                raise RuntimeError("the tunnel closed before the answer")
            received += data
        writer.close()
        await writer.wait_closed()


async def _tunnels(tunnels: int, concurrency: int, monitoring: bool) -> float:
    from apiproxy.server import ProxyServer

    loop = asyncio.get_running_loop()
    gateway = await loop.create_server(_Gateway, "127.0.0.1", 0)
    gateway_port = gateway.sockets[0].getsockname()[1]
    config = _config(("127.0.0.1", 0), ("127.0.0.1", gateway_port), 0 if monitoring else None)
    server = ProxyServer(config.listener, config.tunnel)
    service = None
    if monitoring:
        from apiproxy.monitoring import Monitoring

        service = Monitoring(config, server)
        server.observer = service.observer
        await service.start()
    await server.bind()
    await server.start()
    assert server.address is not None
    port = server.address[1]
    await _client(port, 20)  # warm: first-use costs (caches, the first access-log second) out of the count
    started = time.process_time()
    share, rest = divmod(tunnels, concurrency)
    await asyncio.gather(*(_client(port, share + (i < rest)) for i in range(concurrency)))
    while server.tunnels:  # the last closes are still being counted
        await asyncio.sleep(0.001)
    spent = time.process_time() - started
    await server.drain(1)
    if service is not None:
        await service.stop()
    gateway.close()
    return spent


def tunnels_run(tunnels: int, concurrency: int, monitoring: bool) -> float:
    from apiproxy.eventloop import new_event_loop  # the loop `apiproxy run` serves on

    # The access log goes to stdout: to /dev/null here, so the harness's own output stays readable.
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_tunnels(tunnels, concurrency, monitoring))
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


# --- the harness ----------------------------------------------------------------------------------------


def _child(mode: str, tunnels: int, monitoring: bool, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.monitoring_cost", "--child", mode, str(tunnels),
            "on" if monitoring else "off", str(concurrency)]  # fmt: skip


def _run_child(command: list[str]) -> float:
    # A fixed hash seed: string hashes decide dict probing, which moves instruction counts by ~1% per run.
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800,
                          cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONHASHSEED": "0"})  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... failed: {done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


_TOTALS = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


def _instructions(command: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="apiproxy-callgrind-") as directory:
        out = Path(directory) / "callgrind.out"
        _run_child(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command])
        found = _TOTALS.search(out.read_text())
        if found is None:
            raise RuntimeError("no instruction total in callgrind's output")
        return int(found[1])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:
        mode, tunnels, side, concurrency = args[1], int(args[2]), args[3] == "on", int(args[4])
        spent = observer_run(tunnels, side) if mode == "observer" else tunnels_run(tunnels, concurrency, side)
        print(f"{spent:.6f}")
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.monitoring_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--mode", choices=("observer", "tunnels"), default="observer")
    parser.add_argument("--tunnels", type=int, default=None, help="per run (observer 20,000; tunnels 2,000)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients at once in tunnels mode")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side (without --callgrind)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead of timing")
    options = parser.parse_args(args)
    tunnels = options.tunnels or (20000 if options.mode == "observer" else 2000)
    if not 1 <= tunnels <= 1_000_000 or not 1 <= options.repeats <= 50 or not 1 <= options.concurrency <= 256:
        parser.error("--tunnels 1..1,000,000, --repeats 1..50, --concurrency 1..256")
    print(f"{options.mode}: {tunnels} tunnels per run", file=sys.stderr)
    if options.callgrind:
        small = max(1, tunnels // 4)
        per_tunnel = {}
        for side in (False, True):
            counts = [
                _instructions(_child(options.mode, n, side, options.concurrency)) for n in (small, tunnels)
            ]
            per_tunnel[side] = (counts[1] - counts[0]) / (tunnels - small)
            print(f"  monitoring {'on ' if side else 'off'}: {per_tunnel[side]:,.0f} instructions per tunnel "
                  f"({counts[0]:,} at {small}, {counts[1]:,} at {tunnels})", file=sys.stderr)  # fmt: skip
        print(f"monitoring: {per_tunnel[True] - per_tunnel[False]:,.0f} instructions per tunnel")
        return 0
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(options.repeats):
        for side in (False, True):
            times[side].append(_run_child(_child(options.mode, tunnels, side, options.concurrency)) / tunnels)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    for side, label in ((False, "off"), (True, "on ")):
        print(f"  monitoring {label}: median {statistics.median(times[side]) * 1e6:.2f} µs CPU per tunnel "
              f"(runs: {', '.join(f'{t * 1e6:.2f}' for t in times[side])})", file=sys.stderr)  # fmt: skip
    print(f"monitoring: {(on - off) * 1e6:.2f} µs CPU per tunnel (median of {options.repeats} runs per side)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
