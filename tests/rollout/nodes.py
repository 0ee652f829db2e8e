"""The node proxies of a rolling update, as child processes on one rendered envoy.yaml (Gardener's, with
loopback addresses: `benchmarks.topology.render_envoy`): `apiproxy-envoy` (Gardener's command line, the
handover socket from APIPROXY_HANDOVER_SOCKET, as the chart's gardenerCompatible mode runs it) or the
real Envoy. Every process is ended by its PID; `Site.close` ends any still running, also on failure."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.topology import render_envoy
from lab.gateway import DESTINATION, envoy_binary, free_port
from lab.proxy import ApiproxyProcess

APIPROXY_ENVOY = str(Path(sys.executable).with_name("apiproxy-envoy"))
# The access log's DOWNSTREAM_REMOTE_ADDRESS, which names the tunnel (see traffic.py).
_CLIENT = re.compile(r'"(127\.\d+\.\d+\.\d+:\d+)" "')


class Site:
    """One node: the listen and metrics ports, the envoy.yaml, the handover socket path; and its processes."""

    def __init__(self, gateway_port: int) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="apiproxy-rollout-")
        self.workdir = Path(self._tmp.name)
        self.listen_port, self.metrics_port = free_port(), free_port()
        config = render_envoy(self.listen_port, self.metrics_port, gateway_port, self.workdir / "admin.socket",
                              DESTINATION)  # fmt: skip
        self.config = self.workdir / "envoy.yaml"
        self.config.write_text(yaml.safe_dump(config))
        # The hostPath of the chart: a directory both processes see.
        self.handover_socket = str(self.workdir / "run" / "handover")
        self.processes: list[ApiproxyProcess] = []

    def apiproxy(self, *, drain: int, ready: str = "listening on", handover: bool = True) -> ApiproxyProcess:
        env = {"APIPROXY_HANDOVER_SOCKET": self.handover_socket} if handover else {}
        return self._start(APIPROXY_ENVOY, ["--drain-time-s", str(drain), "-l", "debug"], env, ready)

    def envoy(self) -> ApiproxyProcess:
        # Envoy's log goes to stderr; its listeners accept once the workers have started.
        return self._start(envoy_binary(), ["-l", "info"], {}, "starting main dispatch loop")

    def _start(self, binary: str, extra: list[str], env: dict[str, str], ready: str) -> ApiproxyProcess:
        gardener = ["--concurrency", "2", "--use-dynamic-base-id", "-c", str(self.config)]
        process = ApiproxyProcess([*gardener, *extra], env=env, ready_text=ready, command=[binary])
        self.processes.append(process)
        return process.start()

    def close(self) -> None:
        for process in self.processes:
            process.cleanup()
        self._tmp.cleanup()


def logged_clients(process: ApiproxyProcess) -> list[str]:
    """The client addresses of the tunnels in a process's access log, one per line."""
    return [match.group(1) for match in _CLIENT.finditer(process.stdout())]
