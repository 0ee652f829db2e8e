"""Listener handover: a rolling update without a refused or reset connection.

In a surge rollout the new pod starts while the old one still serves VIP:443 on the same node. The new
process (the taker) connects to the Unix socket at `--handover-socket` (a hostPath both pods mount) before
binding anything, and the running process (the giver) sends it its listening socket over SCM_RIGHTS
(HAProxy's `expose-fd listeners`, Envoy's hot restart). It is the same socket in the kernel, so no
connection in its accept queue is lost. The taker checks it is bound where it would bind itself, starts
accepting on it, and says "taken"; the giver closes its own copy, frees the monitoring port (both pods are
hostNetwork and want the same port), and drains its tunnels up to the drain timeout. When nobody answers
(the first pod on a node, a stale socket file after a crash) or anything goes wrong before "taken", the
taker binds as usual and the giver goes on serving: a failed handover is never worse than none.

  wire.py     the four messages, sans-I/O
  channel.py  one connection on the event loop: records, SCM_RIGHTS, the peer's credentials
  giver.py    the running process's side; taker.py the starting process's side
  metrics.py  apiproxy_handovers_total
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..config import ConfigError

# (role, result): role "giver" or "taker"; result "given", "taken", "none", "declined", "failed", ...
Record = Callable[[str, str], None]

# sun_path holds 107 bytes and a NUL; the giver binds under the path + ".<pid>" (up to 8 bytes) first.
MAX_PATH_BYTES = 99


def parse_socket_path(option: str, value: str) -> str:
    """A path for the handover socket: non-empty, no NUL, short enough for a Unix socket address."""
    text = value.strip()
    if not text or "\0" in text or len(os.fsencode(text)) > MAX_PATH_BYTES:
        raise ConfigError(
            option,
            value,
            f"a file path of at most {MAX_PATH_BYTES} bytes, e.g. /var/run/apiserver-proxy/handover",
        )
    return text
