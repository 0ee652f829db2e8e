"""Application logs on stderr: readable text by default, one JSON object per line with `--log-format json`.

The access log (one line per closed tunnel, on stdout) is separate: see `access_log`.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(verbosity: int = 0, fmt: str = "text") -> None:
    """Info by default (start-up, shutdown, failures); -v adds a line per tunnel (debug)."""
    level = logging.INFO if verbosity <= 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    logging.getLogger("apiproxy").setLevel(level)
    handler.setLevel(level)
    # pyroute2 and asyncio are chatty at debug and say nothing an operator needs at warning.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbosity < 2 else logging.DEBUG)
