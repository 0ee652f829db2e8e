"""An asyncio loop on a daemon thread, so synchronous tests and tools can host asyncio servers
(backends, scripted gateways) beside child processes they drive with plain sockets.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .backend import EchoServer

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "lab-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run `coroutine` on the thread's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class EchoThread:
    """An `EchoServer` (TLS when `tls` is given) on a loop thread of its own."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._thread = LoopThread("echo")
        self.server = EchoServer(tls)
        self.port = self._thread.run(self.server.start())

    def stop(self) -> None:
        self._thread.run(self.server.stop())
        self._thread.stop()
