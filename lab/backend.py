"""A TLS stand-in for a shoot's kube-apiserver: answers the discovery paths kubectl asks first, or echoes.

`KubeAPIStub` speaks HTTP/1.1 (h11) with keep-alive; `EchoServer` sends back every byte it receives and
closes after the client's close, so transfers can be checked end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable
from typing import Any

import h11

VERSION_INFO = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-apiproxy-lab",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _namespace(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"00000000-0000-0000-0000-{abs(hash(name)) % 10**12:012d}",
                     "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }  # fmt: skip


NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")

ROUTES: dict[str, Callable[[], Any]] = {
    "/version": lambda: VERSION_INFO,
    "/api": lambda: {"kind": "APIVersions", "versions": ["v1"],
                     "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}]},
    "/apis": lambda: {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": lambda: {
        "kind": "APIResourceList", "groupVersion": "v1",
        "resources": [{"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
                       "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"]}],
    },
    "/api/v1/namespaces": lambda: {
        "kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
        "items": [{"kind": "Namespace", "apiVersion": "v1", **_namespace(n)} for n in NAMESPACES],
    },
}  # fmt: skip


class _StreamServer:
    """A loopback asyncio server whose connections `_serve` handles; `start` returns its port."""

    tls: ssl.SSLContext | None
    _server: asyncio.Server | None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self.tls)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class KubeAPIStub(_StreamServer):
    """Answers GET on ROUTES with JSON, everything else with a Kubernetes-style 404 Status."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls = tls
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    connection.receive_data(data)
                    if not data:
                        break
                    continue
                if isinstance(event, h11.Request):
                    path = event.target.decode("ascii", "replace").split("?", 1)[0].rstrip("/") or "/"
                    self.requests.append(path)
                    writer.write(self._respond(connection, event.method, path))
                    await writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    if connection.our_state is h11.MUST_CLOSE:
                        break
                    connection.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    break
        except (h11.ProtocolError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _respond(connection: h11.Connection, method: bytes, path: str) -> bytes:
        route = ROUTES.get(path) if method in (b"GET", b"HEAD") else None
        if route is not None:
            status, body = 200, json.dumps(route()).encode()
        else:
            status = 404
            body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "message": f"the server could not find the requested resource ({path})",
                               "reason": "NotFound", "code": 404}).encode()  # fmt: skip
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        data = connection.send(h11.Response(status_code=status, headers=headers)) or b""
        data += connection.send(h11.Data(data=body)) or b""
        data += connection.send(h11.EndOfMessage()) or b""
        return data


class EchoServer(_StreamServer):
    """Echoes every byte back; over plain TCP it also carries half-close (answers a FIN after the echo)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
