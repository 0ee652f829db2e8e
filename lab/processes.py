"""Ending a child process the lab started: SIGTERM by its PID, SIGKILL after a grace period."""

from __future__ import annotations

import os
import signal
import subprocess


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """End `process` (a no-op if it has exited) and return its exit status."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)
    return process.returncode
