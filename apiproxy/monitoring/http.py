"""The monitoring port (16910): `/metrics` and `/ready`, everything else 404.

Served by threads of their own, not by the proxy's event loop: kubelet probes `/ready` with a 1 s timeout,
and a loop saturated by tunnel traffic (or a CPU-throttled pod) must not make the pod NotReady. The
handlers only read state that is safe to read from another thread (ints and bools under the GIL,
prometheus-client's locked registry); Python's switch interval (5 ms) bounds how long the loop can keep
this thread off the interpreter.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"

# Returns None when ready, else a one-line reason.
Readiness = Callable[[], str | None]
Exposition = Callable[[], bytes]


class BindError(Exception):
    def __init__(self, address: tuple[str, int], error: OSError) -> None:
        super().__init__(f"cannot listen on {address[0]}:{address[1]}: {error.strerror or error}")
        self.address = address
        self.error = error


# Connections served at once per address; more are closed at accept. The port is on the node's network
# (hostPort): a pile of idle connections must not grow threads without bound.
MAX_CONCURRENT = 32


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], ready: Readiness, metrics: Exposition) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.ready = ready
        self.metrics = metrics
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A probe that hangs up before the answer is written is routine, not worth a traceback.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return
        log.warning("monitoring request from %s failed: %r", client_address, error)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # Let [::]:16910 and 0.0.0.0:16910 both bind, as Envoy's two addresses do.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10  # s: a client that sends nothing does not hold a thread longer
    server_version = "apiproxy"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, body, content_type = 200, self.server.metrics(), CONTENT_TYPE_METRICS
        elif path == "/ready":
            reason = self.server.ready()
            status = 200 if reason is None else 503
            body = (("ready" if reason is None else f"not ready: {reason}") + "\n").encode()
            content_type = "text/plain; charset=utf-8"
        else:
            status, body, content_type = 404, b"not found\n", "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("monitoring %s: " + format, self.address_string(), *args)


class MonitoringEndpoint:
    """One HTTP server thread per address."""

    def __init__(self, addresses: list[tuple[str, int]], ready: Readiness, metrics: Exposition) -> None:
        self.addresses = addresses
        self.ready = ready
        self.metrics = metrics
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    @property
    def bound(self) -> list[tuple[str, int]]:
        return [(str(s.server_address[0]), int(s.server_address[1])) for s in self._servers]

    def start(self) -> None:
        """Bind every address, then serve; BindError (and nothing bound) if one cannot be bound."""
        for address in self.addresses:
            try:
                self._servers.append(_Server(address, self.ready, self.metrics))
            except OSError as error:
                self.stop()
                raise BindError(address, error) from None
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name=f"apiproxy-monitoring-{server.server_address[0]!s}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Blocks up to the poll interval: call it off the event loop."""
        for server, thread in zip(self._servers, self._threads, strict=False):
            server.shutdown()
            thread.join(5)
        for server in self._servers:
            server.server_close()
        self._servers.clear()
        self._threads.clear()
