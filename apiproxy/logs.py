"""Application logs on stderr: readable text by default, one JSON object per line with `--log-format json`.

Log messages carry text from peers (a gateway's reason phrase, a request path), so in both formats a
message is capped at MESSAGE_LIMIT characters and control characters are escaped (in text as `\\x1b`, in
JSON as `\\u001b`): an ANSI sequence or a bare CR in a log line could rewrite what an operator's terminal
shows, or forge a line.

The access log (one line per closed tunnel, on stdout) is separate: see `access_log`.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import sys
import time
from typing import Any

MESSAGE_LIMIT = 1000  # characters of one message; the rest is replaced by a marker saying how much

# C0 (newline and tab too: one record, one line), DEL and C1 (U+0080-U+009F; U+009B opens an ANSI sequence
# like ESC [ does).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # tracebacks keep their lines
_JSON_UNESCAPED = re.compile("[\x7f-\x9f]")  # json.dumps escapes C0 itself


def _hex(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def capped(message: str) -> str:
    """At most MESSAGE_LIMIT characters of `message`, and a marker saying how many more there were."""
    if len(message) <= MESSAGE_LIMIT:
        return message
    return f"{message[:MESSAGE_LIMIT]}… [{len(message) - MESSAGE_LIMIT} more characters]"


def escaped(text: str) -> str:
    """Control characters as `\\xNN`."""
    return _CONTROL.sub(_hex, text)


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if len(message) > MESSAGE_LIMIT or _CONTROL.search(message):
            record = copy.copy(record)  # other handlers (pytest's, for one) see the record as it was
            record.message = escaped(capped(message))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _CONTROL_BUT_NEWLINE.sub(_hex, super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _CONTROL_BUT_NEWLINE.sub(_hex, super().formatStack(stack_info))


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": capped(record.getMessage()),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        # JSON needs only C0 escaped; DEL and C1 get the same \u escapes, for terminals that act on them.
        return _JSON_UNESCAPED.sub(
            lambda m: f"\\u{ord(m.group()):04x}", json.dumps(entry, ensure_ascii=False)
        )


def setup(verbosity: int = 0, fmt: str = "text") -> None:
    """Info by default (start-up, shutdown, failures); -v adds a line per tunnel (debug)."""
    level = logging.INFO if verbosity <= 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    logging.getLogger("apiproxy").setLevel(level)
    handler.setLevel(level)
    # pyroute2 and asyncio are chatty at debug and say nothing an operator needs at warning.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbosity < 2 else logging.DEBUG)
