"""The YAML/JSON tree as protobuf messages: fields by snake_case name (lowerCamelCase accepted, as in Envoy's
proto-JSON reading), typed accessors that refuse a wrong value naming its config path, and `BootstrapError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from ..documents import show
from .fields import IGNORE, TYPE_PREFIX, USE


class BootstrapError(ValueError):
    """The config cannot be run. `str()` is `<config path>: <why>`."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class Findings:
    """Shared by the messages of one document: the reading's options, and the fields it found without effect."""

    def __init__(self, allow_unknown_fields: bool) -> None:
        self.allow_unknown_fields = allow_unknown_fields
        self.ignored: list[str] = []


_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
# What a field (or extension) name of Envoy's looks like; any other key is quoted and bounded in a path.
_FIELD_NAME = re.compile(r"@?[A-Za-z0-9_.]{1,100}")


def field_path(path: str, name: str) -> str:
    """The config path of field `name` of the message at `path`."""
    name = name if _FIELD_NAME.fullmatch(name) else show(name)
    return f"{path}.{name}" if path else name


def _snake(name: str) -> str:
    return _CAMEL.sub(r"_\1", name).lower() if not name.startswith("@") else name


def type_name(type_url: str) -> str:
    return type_url.removeprefix(TYPE_PREFIX)


class Message:
    """One protobuf message of the document: its fields by snake_case name, and where it is."""

    __slots__ = ("fields", "findings", "path")

    def __init__(self, findings: Findings, value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            raise BootstrapError(path, f"expected an object, got {show(value)}")
        # proto-JSON: null, like an absent field, leaves the field unset; so does an empty list.
        self.fields = {_snake(str(k)): v for k, v in value.items() if v is not None and v != []}
        self.path = path
        self.findings = findings

    def at(self, name: str) -> str:
        return field_path(self.path, name)

    def check(self, table: Mapping[str, str], *, refuse: bool = True) -> None:
        """Apply the field table: note ignored fields, refuse what apiproxy cannot honour."""
        for name in self.fields:
            verdict = table.get(name)
            if verdict is None:
                if not self.findings.allow_unknown_fields:
                    raise BootstrapError(self.at(name), "unknown field (Envoy refuses it too)")
                verdict = IGNORE
            if verdict == USE:
                continue
            if verdict == IGNORE or not refuse:
                self.findings.ignored.append(self.at(name))
            else:
                raise BootstrapError(self.at(name), verdict)

    def has(self, name: str) -> bool:
        return name in self.fields

    def message(self, name: str) -> Message | None:
        return Message(self.findings, self.fields[name], self.at(name)) if name in self.fields else None

    def require(self, name: str) -> Message:
        found = self.message(name)
        if found is None:
            raise BootstrapError(self.at(name), "required")
        return found

    def messages(self, name: str) -> Iterator[Message]:
        value = self.fields.get(name, [])
        if not isinstance(value, list):
            raise BootstrapError(self.at(name), f"expected a list, got {show(value)}")
        for index, item in enumerate(value):
            yield Message(self.findings, item, f"{self.at(name)}[{index}]")

    def string(self, name: str, default: str = "") -> str:
        value = self.fields.get(name, default)
        if not isinstance(value, str):
            raise BootstrapError(self.at(name), f"expected a string, got {show(value)}")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.fields.get(name, default)
        if isinstance(value, Mapping):  # google.protobuf.BoolValue written as {value: true}
            value = value.get("value", False)
        if value in ("true", "false"):  # Envoy's reader takes the strings too
            value = value == "true"
        if not isinstance(value, bool):
            raise BootstrapError(self.at(name), f"expected true or false, got {show(value)}")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**32 - 1) -> int:
        value = self.fields.get(name, default)
        if isinstance(value, Mapping):  # google.protobuf.UInt32Value written as {value: N}
            value = value.get("value", 0)
        if isinstance(value, str) and value.isdigit():  # proto-JSON allows integers as strings
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise BootstrapError(
                self.at(name), f"expected an integer between {minimum} and {maximum}, got {show(value)}"
            )
        return value

    def duration(self, name: str) -> float | None:
        """A google.protobuf.Duration: proto-JSON's decimal seconds with an `s` suffix (`5s`, `0.25s`), or
        the message form `{seconds: 5, nanos: 0}` Envoy's reader also takes."""
        if name not in self.fields:
            return None
        value = self.fields[name]
        if isinstance(value, Mapping):
            duration = Message(self.findings, value, self.at(name))
            duration.check({"seconds": USE, "nanos": USE})
            return (
                duration.integer("seconds", 0, maximum=315_576_000_000)
                + duration.integer("nanos", 0, maximum=999_999_999) / 1e9
            )
        match = re.fullmatch(r"(\d+)(\.\d{1,9})?s", value) if isinstance(value, str) else None
        if match is None:
            raise BootstrapError(
                self.at(name), f"expected a duration in seconds such as 5s or 0.25s, got {show(value)}"
            )
        return float(value[:-1])

    def enum(self, name: str, values: tuple[str, ...]) -> str:
        """An enum by name or number; the first value is the proto default."""
        value = self.fields.get(name, values[0])
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(values):
            return values[value]
        if value not in values:
            raise BootstrapError(self.at(name), f"expected one of {', '.join(values)}, got {show(value)}")
        return str(value)

    def type_name(self) -> str:
        return type_name(self.string("@type"))
