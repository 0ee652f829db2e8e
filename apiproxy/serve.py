"""`apiproxy run` once its options are parsed: the process that serves.

Parsing needs typer, click and (through typer) pydantic, ~14 MiB of RSS that a node proxy would then carry
for its whole life. So the command line, once it has a valid `ProxyConfig`, writes it to a pipe and
replaces itself with this module (`os.execv`: the same PID, the same environment), which imports only
what serving needs. The pipe is the process's own: nothing outside it can write the configuration.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import NoReturn

from .config import ConfigError, ProxyConfig


def exec_into_server(config: ProxyConfig, verbose: int, log_format: str) -> NoReturn:
    """Replace this process with `python -m apiproxy.serve`, which serves `config`."""
    payload = pickle.dumps((config, verbose, log_format))
    read_end, write_end = os.pipe()
    try:
        # A configuration is a few KiB: it fits the pipe's buffer, so the write does not wait for a reader.
        view = memoryview(payload)
        while view:
            view = view[os.write(write_end, view) :]
    finally:
        os.close(write_end)
    os.set_inheritable(read_end, True)
    sys.stdout.flush()
    sys.stderr.flush()
    # The original arguments ride along (unused) so that ps still shows what the process serves.
    os.execv(sys.executable, [sys.executable, "-m", "apiproxy.serve", str(read_end), *sys.argv[1:]])


def main() -> None:
    read_end = int(sys.argv[1])
    chunks = []
    while chunk := os.read(read_end, 1 << 16):
        chunks.append(chunk)
    os.close(read_end)
    config, verbose, log_format = pickle.loads(b"".join(chunks))  # our own pipe
    from . import logs
    from .runtime import run_proxy

    logs.setup(verbose, log_format)
    try:
        status = run_proxy(config)
    except ConfigError as error:  # found at start (an address that cannot be bound): one line, as the CLI
        print(f"apiproxy: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)


if __name__ == "__main__":
    main()
