"""The backend behind the seed gateway: answers every request (a header block ending in an empty line, no
body) with a fixed tiny 200, keeping the connection open; in plain HTTP, or in TLS as a stand-in for the
shoot's API server (the reconnect storm's clients verify it as `kubernetes.default.svc`). Run as a child
process so its CPU is not the harness's: `python -m benchmarks.backend PORT [CERT KEY]` prints `ready`
once listening."""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import cast

import uvloop

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class _Answer(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast, not isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.pending += data
        requests = self.pending.count(b"\r\n\r\n")
        if requests:
            self.pending = self.pending[self.pending.rindex(b"\r\n\r\n") + 4 :]
            self.transport.write(RESPONSE * requests)

    def eof_received(self) -> bool:
        return False


async def _serve(port: int, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answer, "127.0.0.1", port, backlog=4096, ssl=tls)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    tls = None
    if len(sys.argv) == 4:  # PORT CERT KEY
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(sys.argv[2], sys.argv[3])
    uvloop.run(_serve(int(sys.argv[1]), tls))


if __name__ == "__main__":
    main()
