"""The bootstrap's `layered_runtime`: static layers' values, of which apiproxy reads the connection limits
(the tunnel listener's and the global downstream one). Other keys are listed as ignored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ..documents import show
from .fields import LAYER_FIELDS, LAYERED_RUNTIME_FIELDS
from .message import BootstrapError, Message


def read_runtime(layered: Message | None) -> dict[str, object]:
    """Every static layer's values by dotted key; later layers override earlier ones, as in Envoy."""
    values: dict[str, object] = {}
    if layered is None:
        return values
    layered.check(LAYERED_RUNTIME_FIELDS)
    for layer in layered.messages("layers"):
        layer.check(LAYER_FIELDS)
        static = layer.fields.get("static_layer")
        if static is not None:
            if not isinstance(static, Mapping):
                raise BootstrapError(layer.at("static_layer"), f"expected an object, got {show(static)}")
            values.update(_flatten(static))
    return values


def connection_limit_keys(listener_name: str, ignore_global_limit: bool) -> list[str]:
    """The runtime keys that limit the tunnel listener's connections."""
    keys = [f"envoy.resource_limits.listener.{listener_name}.connection_limit"]
    if not ignore_global_limit:
        keys.append("overload.global_downstream_max_connections")
    return keys


def runtime_integer(key: str, value: object) -> int:
    where = f"layered_runtime.static_layer.{key}"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BootstrapError(where, f"expected a positive integer, got {show(value)}")
    return value


def _flatten(struct: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, object]]:
    """Envoy's static_layer: nested objects are read as dotted keys."""
    for key, value in struct.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, name + ".")
        else:
            yield name, value
