"""`apiproxy` as a child process, the way users run it: started with arguments, ready when its log says
it is listening, ended by its PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .processes import stop


class ApiproxyProcess:
    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, ready_text: str = "listening on",
                 command: list[str] | None = None) -> None:  # fmt: skip
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.ready_text = ready_text
        self.command = command or [sys.executable, "-m", "apiproxy"]
        self._tmp = tempfile.TemporaryDirectory(prefix="apiproxy-proc-")
        self.stdout_path = Path(self._tmp.name) / "stdout"
        self.stderr_path = Path(self._tmp.name) / "stderr"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 20.0) -> ApiproxyProcess:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [*self.command, *self.args], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_text in self.stderr():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"apiproxy exited with {self.process.returncode}: {self.stderr()[-2000:]}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"apiproxy not ready within {timeout:g}s: {self.stderr()[-2000:]}")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, grace: float = 10.0) -> int | None:
        return stop(self.process, grace) if self.process is not None else None

    def cleanup(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> ApiproxyProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.cleanup()
