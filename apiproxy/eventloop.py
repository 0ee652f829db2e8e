"""The event loop the proxy runs on: uvloop's, less a map it keeps of every connection.

uvloop's loop registers each transport in a weak map from descriptor to transport (`Loop._transports`, a
`weakref.WeakValueDictionary`) for one check: `add_reader`/`add_writer` on a descriptor that a live
transport owns raise, instead of taking the transport's events from it. Each entry costs a `KeyedRef`
and a slot of the map's dict, ~125 bytes per connection, two per tunnel: 8 % of an idle tunnel's memory.
Registering and dropping it runs four Python-level functions (the map's `__setitem__`,
`KeyedRef.__new__` and `__init__`, the removal callback). apiproxy never adds a reader or writer to a
transport's descriptor: the splice pump works on duplicates. So the map is made one that keeps nothing.

The map is a private attribute of a compiled class, reachable only through the garbage collector's view
of the loop's references. If a uvloop release changes it (no such map, or more than one), the loop is
left as it is and `untrack_transports` returns False; tests/unit/test_eventloop.py fails then, so an upgrade
cannot lose the saving unnoticed.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import uvloop


class _KeepsNothing(weakref.WeakValueDictionary[Any, Any]):
    """uvloop's transport map, keeping nothing: every lookup misses, as for a descriptor of no transport."""

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def untrack_transports(loop: asyncio.AbstractEventLoop) -> bool:
    """Make uvloop's descriptor-to-transport map of `loop` keep nothing. True if it was found and emptied."""
    if not isinstance(loop, uvloop.Loop):
        return False
    maps = [ref for ref in gc.get_referents(loop) if type(ref) is weakref.WeakValueDictionary]
    if len(maps) != 1 or len(maps[0]):
        return False
    maps[0].__class__ = _KeepsNothing
    return True


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new uvloop loop that does not register its transports (see the module's text)."""
    loop = uvloop.new_event_loop()
    untrack_transports(loop)
    return loop
