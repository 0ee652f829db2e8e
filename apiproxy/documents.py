"""Loading the YAML/JSON documents apiproxy is given (Envoy's bootstrap, a kubeconfig) within bounds.

Both are a few KiB, read once at start, and may hold secrets (a kubeconfig's bearer tokens and client
keys). So a file larger than `MAX_BYTES`, nested deeper than `MAX_DEPTH` or holding more than `MAX_VALUES`
values (YAML aliases expanded) is refused before anything walks it, and every failure is a
`DocumentError`: one line saying what and where (line, column) that never quotes the document. PyYAML's
own messages quote the offending line, so only their fixed problem text and position are kept. `show`
renders a value for an error message in at most `SHOWN` characters, without first rendering it whole.
"""

from __future__ import annotations

import json
import re
import reprlib
from os import PathLike
from typing import Any

import yaml

# A bootstrap or kubeconfig is KiBs; a kubeconfig holding hundreds of clusters with their certificates and
# keys embedded is a few MiB. Anything larger is not one of them, and reading it would cost seconds.
MAX_BYTES = 8 * 1024 * 1024
# Envoy's bootstrap nests about 15 levels deep, a kubeconfig about 6; protobuf's JSON parser stops at 100.
MAX_DEPTH = 100
# Values (scalars, keys, lists, objects), YAML aliases expanded. Gardener's bootstrap has ~300, a kubeconfig
# ~30 a context with its cluster and user (so ~3,000 contexts fit). PyYAML builds ~50,000 values a second
# on a busy node, so this also bounds the time a dense file within MAX_BYTES takes (4 million values in 8
# MiB). An alias is a reference: a 10 KB "billion laughs" loads at once, and whatever walks or prints the
# value afterwards visits 10^9 of them.
MAX_VALUES = 100_000
# The longest rendering of a value in an error message.
SHOWN = 60

# libyaml's parser when PyYAML was built with it: the same results, ~6x faster.
_LOADER = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
# A JSON string (to skip its brackets) or a bracket, for finding where JSON nests too deeply.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class DocumentError(ValueError):
    """A document that cannot be loaded. `str()` is one line: what, and where when known."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None) -> None:
        self.problem = problem
        self.line = line
        self.column = column
        super().__init__(f"{problem} (line {line}, column {column})" if line is not None else problem)


class UnreadableFile(DocumentError):
    """The file itself: missing, not readable, too large, not UTF-8 text."""


def read_text(path: str | PathLike[str]) -> str:
    """The file's text, read no further than `MAX_BYTES` (a FIFO or /dev/zero ends too)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_BYTES + 1)
    except OSError as error:
        raise UnreadableFile(error.strerror or type(error).__name__) from None
    if len(data) > MAX_BYTES:
        raise UnreadableFile(_too_large())
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise UnreadableFile("not UTF-8 text", line, column) from None


def load_mapping(text: str, expected: str) -> dict[str, Any]:
    """JSON or YAML text to a mapping; `expected` names what it should be ("a kubeconfig")."""
    if len(text) > MAX_BYTES:  # a str of N characters is at least N bytes in the file
        raise DocumentError(_too_large())
    try:
        document = _load_json(text) if text.lstrip().startswith("{") else None
        if document is None:
            document = _load_yaml(text)
    except RecursionError:  # not expected within MAX_DEPTH, but never a traceback
        raise _too_deep() from None
    except MemoryError:
        raise DocumentError("too large to load (out of memory)") from None
    if not isinstance(document, dict):
        raise DocumentError(f"expected {expected}, got {_kind(document)}")
    return document


def _load_json(text: str) -> object | None:
    """The document when the text is JSON (exact: json's numbers and escapes), else None (then YAML)."""
    built = 0

    def counted(pairs: list[tuple[str, object]]) -> dict[str, object]:
        # Stops a file of tiny objects while json builds it (760,000 in 8 MiB took 182 MiB before the walk).
        nonlocal built
        built += 1 + 2 * len(pairs)
        if built > MAX_VALUES:
            raise _too_many()
        return dict(pairs)

    try:
        document: object = json.loads(text, object_pairs_hook=counted)
    except DocumentError:
        raise
    except ValueError:
        # Perhaps a YAML flow mapping (or an integer of more than 4,300 digits): YAML says what is wrong.
        return None
    except RecursionError:
        raise _too_deep(*_json_too_deep(text)) from None
    # JSON has no aliases: each value is its own, and a walk that stops at the bounds costs no more.
    values = 1
    collections: list[tuple[dict[str, object] | list[object], int]] = []
    if isinstance(document, dict | list):
        collections.append((document, 1))
    while collections:
        collection, depth = collections.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(*_json_too_deep(text))
        children = list(collection.values()) if isinstance(collection, dict) else collection
        values += len(children) * (2 if isinstance(collection, dict) else 1)  # an object's keys count too
        if values > MAX_VALUES:
            raise _too_many()
        collections.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return document


def _json_too_deep(text: str) -> tuple[int | None, int | None]:
    """Where JSON text first nests deeper than MAX_DEPTH."""
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return _position(text, token.start())
        elif bracket in "]}":
            depth -= 1
    return None, None


def _load_yaml(text: str) -> object:
    try:
        _check_events(text)
        return yaml.load(text, Loader=_LOADER)  # a safe loader: plain data only
    except DocumentError:
        raise
    except yaml.MarkedYAMLError as error:
        problem = f"{error.context}: {error.problem}" if error.context else str(error.problem)
        mark = error.problem_mark or error.context_mark
        raise _invalid(problem, mark.line + 1 if mark else None, mark.column + 1 if mark else None) from None
    except yaml.reader.ReaderError as error:
        offset = error.position
        if _LOADER is not yaml.SafeLoader:  # libyaml counts this one in bytes of UTF-8, not in characters
            offset = len(text.encode()[:offset].decode(errors="ignore"))
        line, column = _position(text, offset)
        raise _invalid(f"character U+{error.character:04X}: {error.reason}", line, column) from None
    except yaml.YAMLError as error:
        raise _invalid(type(error).__name__) from None
    except (ValueError, OverflowError) as error:
        # A scalar the constructor cannot convert: an integer of more than 4,300 digits, February 30th.
        raise _invalid(f"a value that cannot be converted ({error})") from None


def _check_events(text: str) -> None:
    """Depth and alias expansion, on the event stream (iterative, so deep nesting costs no recursion)."""
    open_anchors: list[str | None] = []
    starts: list[int] = []
    sizes: dict[str, int] = {}  # anchor -> values in its node, aliases expanded
    values = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(starts) == MAX_DEPTH:
                raise _too_deep(*_where(event))
            open_anchors.append(event.anchor)
            starts.append(values)
            values += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, start = open_anchors.pop(), starts.pop()
            if anchor is not None:
                sizes[anchor] = values - start
        elif isinstance(event, yaml.ScalarEvent):
            values += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent) and event.anchor is not None:
            if event.anchor in open_anchors:
                raise DocumentError("a YAML alias inside its own anchor (a cycle)", *_where(event))
            values += sizes.get(event.anchor, 1)  # an undefined one: the composer says so
            if values > MAX_VALUES:
                raise _too_many("YAML aliases expand it to ", *_where(event))
        if values > MAX_VALUES:
            raise _too_many("", *_where(event))


def _where(event: yaml.Event) -> tuple[int | None, int | None]:
    mark = event.start_mark
    return (mark.line + 1, mark.column + 1) if mark is not None else (None, None)


def _invalid(problem: str, line: int | None = None, column: int | None = None) -> DocumentError:
    return DocumentError(f"not valid YAML or JSON: {clip(problem)}", line, column)


def _too_many(how: str = "", line: int | None = None, column: int | None = None) -> DocumentError:
    return DocumentError(f"{how}more than {MAX_VALUES:,} values", line, column)


def _too_deep(line: int | None = None, column: int | None = None) -> DocumentError:
    return DocumentError(f"nested deeper than {MAX_DEPTH} levels", line, column)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _too_large() -> str:
    return f"larger than {MAX_BYTES // (1024 * 1024)} MiB"


def _kind(value: object) -> str:
    if value is None:
        return "an empty document"
    if isinstance(value, list):
        return "a list"
    return f"a single value ({type(value).__name__})"


def clip(text: str, limit: int = 80) -> str:
    """A message from elsewhere (a parser, a formatter) on one line of at most `limit` characters, its
    control characters escaped (an ANSI escape in a message would reach the operator's terminal)."""
    text = _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxdict, _SHOW.maxlist, _SHOW.maxstring, _SHOW.maxother = 2, 3, 4, SHOWN, SHOWN


def show(value: object) -> str:
    """`repr(value)` for an error message, in at most `SHOWN` characters, never built whole first. Only
    for values that are not secret: a message names a secret field by its path, never by its value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"  # repr() of a 5,000-digit one raises
    text = _SHOW.repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."
