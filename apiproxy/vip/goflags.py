"""The Go sidecar's command line as its binary has it: spf13/pflag syntax over the sidecar's own flags and
klog v2.140's (added from Go's flag set), each value checked by its Go type, errors worded as pflag and
klog word them. Pure functions; `sidecar` acts on the result.

pflag syntax: `--name=value`, `--name value` (a value flag takes the next argument, whatever it is),
`--name` for booleans (which never take the next argument), `-v2`, `-v=2`, `-v 2`, `-h`; one dash before
a long name is a shorthand and an error (`-interface` -> unknown shorthand flag: 'i'); positional
arguments are ignored; `--` ends the flags.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# `--help` as the Go binary prints it (`go run ./cmd/apiserver-proxy-sidecar --help`, klog v2.140.0,
# pflag v1.0.10), with the one line Go no longer has: `--setup-iptables` (the sidecars of 2020-2023; see
# the README's "Differences from the Go sidecar"). The port default stays 443 here, where apiproxy listens:
# Go prints 9443 and uses it for nothing since it dropped its iptables rules.
USAGE_FLAGS = """\
      --add_dir_header                      If true, adds the file directory to the header of the log messages
      --alsologtostderr                     log to standard error as well as files (no effect when -logtostderr=true)
      --alsologtostderrthreshold severity   logs at or above this threshold go to stderr when -alsologtostderr=true (no effect when -logtostderr=true)
      --cleanup                             [optional] indicates whether created interface should be removed on exit.
      --daemon                              [optional] indicates if the sidecar should run as a daemon (default true)
      --interface string                    [optional] name of the interface to add address to. (default "lo")
      --ip-address string                   ip-address on which the proxy is listening (e.g. 1.2.3.4).
      --legacy_stderr_threshold_behavior    If true, stderrthreshold is ignored when logtostderr=true (legacy behavior). If false, stderrthreshold is honored even when logtostderr=true (default true)
      --log_backtrace_at traceLocation      when logging hits line file:N, emit a stack trace (default :0)
      --log_dir string                      If non-empty, write log files in this directory (no effect when -logtostderr=true)
      --log_file string                     If non-empty, use this log file (no effect when -logtostderr=true)
      --log_file_max_size uint              Defines the maximum size a log file can grow to (no effect when -logtostderr=true). Unit is megabytes. If the value is 0, the maximum file size is unlimited. (default 1800)
      --logtostderr                         log to standard error instead of files (default true)
      --one_output                          If true, only write logs to their native severity level (vs also writing to each lower severity level; no effect when -logtostderr=true)
      --port string                         [optional] port on which the proxy is listening. (default "443")
      --setup-iptables                      [optional] indicates whether iptables rules should be setup.
      --skip_headers                        If true, avoid header prefixes in the log messages
      --skip_log_headers                    If true, avoid headers when opening log files (no effect when -logtostderr=true)
      --stderrthreshold severity            logs at or above this threshold go to stderr when writing to files and stderr (no effect when -logtostderr=true or -alsologtostderr=true unless -legacy_stderr_threshold_behavior=false) (default 2)
      --sync-interval duration              [optional] interval to check for the added interface. (default 1m0s)
  -v, --v Level                             number for the log level verbosity
      --vmodule moduleSpec                  comma-separated list of pattern=N settings for file-filtered logging
"""

_GO_INT = re.compile(r"[+-]?[0-9]+")
_SEVERITIES = ("INFO", "WARNING", "ERROR", "FATAL")


def _parse_int(value: str, bits: int) -> str | None:
    """strconv.ParseInt(value, 10, bits)'s error, or None."""
    if not _GO_INT.fullmatch(value):
        return f'strconv.ParseInt: parsing "{value}": invalid syntax'
    if not -(2 ** (bits - 1)) <= int(value) < 2 ** (bits - 1):
        return f'strconv.ParseInt: parsing "{value}": value out of range'
    return None


def _level(value: str) -> str | None:
    return _parse_int(value, 32)


def _severity(value: str) -> str | None:
    return None if value.upper() in _SEVERITIES else _parse_int(value, 32)


def _uint(value: str) -> str | None:
    """Go's flag.Uint64: strconv.ParseUint(value, 0, 64) (no sign; 0x, 0o, 0b or a leading 0 for octal;
    underscores), its errors reduced to two words."""
    if not re.fullmatch(r"[0-9A-Za-z_]+", value):
        return "parse error"
    try:
        number = int(value, 8) if re.fullmatch(r"0[0-7_]+", value) else int(value, 0)
    except ValueError:
        return "parse error"
    return None if number < 2**64 else "value out of range"


def _module_spec(value: str) -> str | None:
    for pattern in value.split(","):
        if not pattern:
            continue
        parts = pattern.split("=")
        if len(parts) != 2 or not parts[0] or not parts[1] or _parse_int(parts[1], 32):
            return "syntax error: expect comma-separated list of filename=N"
        if int(parts[1]) < 0:
            return "negative value for vmodule level"
    return None


def _trace_location(value: str) -> str | None:
    if not value:
        return None
    parts = value.split(":")
    if len(parts) != 2 or "." not in parts[0] or not re.fullmatch(r"[+-]?[0-9]+", parts[1]):
        return "syntax error: expect file.go:234"
    return "negative or zero value for level" if int(parts[1]) <= 0 else None


_GO_DURATION = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+")


def _duration(value: str) -> str | None:
    """time.ParseDuration's syntax (whether the value is usable is `options.build_vip`'s call)."""
    if _GO_DURATION.fullmatch(value) or re.fullmatch(r"[+-]?0", value):
        return None
    if _GO_INT.fullmatch(value):
        return f'time: missing unit in duration "{value}"'
    return f'time: invalid duration "{value}"'


def _anything(_: str) -> str | None:
    return None


# Flags taking a value: default and the check of its Go type. The port is a string in Go, never read.
_VALUE_FLAGS: dict[str, tuple[str, Callable[[str], str | None]]] = {
    "ip-address": ("", _anything), "interface": ("lo", _anything), "sync-interval": ("1m", _duration),
    "port": ("443", _anything), "v": ("0", _level), "vmodule": ("", _module_spec), "log_dir": ("", _anything),
    "log_file": ("", _anything), "log_file_max_size": ("1800", _uint), "stderrthreshold": ("2", _severity),
    "alsologtostderrthreshold": ("0", _severity), "log_backtrace_at": (":0", _trace_location),
}  # fmt: skip
# Boolean flags and their defaults; True when the flag is pflag's own (its error names strconv.ParseBool),
# False when it comes from Go's flag package through klog (its error says "parse error").
_BOOL_FLAGS: dict[str, tuple[bool, bool]] = {
    "daemon": (True, True), "cleanup": (False, True), "setup-iptables": (False, True),
    "logtostderr": (True, False), "alsologtostderr": (False, False), "add_dir_header": (False, False),
    "skip_headers": (False, False), "skip_log_headers": (False, False), "one_output": (False, False),
    "legacy_stderr_threshold_behavior": (True, False),
}  # fmt: skip
# Go's strconv.ParseBool.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class FlagError(ValueError):
    pass


class HelpRequested(Exception):
    pass


@dataclass
class Flags:
    values: dict[str, str] = field(default_factory=lambda: {n: d for n, (d, _) in _VALUE_FLAGS.items()})
    switches: dict[str, bool] = field(default_factory=lambda: {n: d for n, (d, _) in _BOOL_FLAGS.items()})


def _display(name: str) -> str:
    return "-v, --v" if name == "v" else f"--{name}"


def _set_switch(flags: Flags, name: str, value: str | None) -> None:
    if value is None:
        flags.switches[name] = True
    elif value in _TRUE or value in _FALSE:
        flags.switches[name] = value in _TRUE
    else:
        reason = (
            f'strconv.ParseBool: parsing "{value}": invalid syntax' if _BOOL_FLAGS[name][1] else "parse error"
        )
        raise FlagError(f'invalid argument "{value}" for "--{name}" flag: {reason}')


def _set_value(flags: Flags, name: str, value: str) -> None:
    error = _VALUE_FLAGS[name][1](value)
    if error is not None:
        raise FlagError(f'invalid argument "{value}" for "{_display(name)}" flag: {error}')
    flags.values[name] = value


def parse_flags(argv: Sequence[str]) -> Flags:
    flags = Flags()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue  # the Go sidecar ignores positional arguments
        if arg.startswith("--"):
            name, has_value, text = arg[2:].partition("=")
            value: str | None = text if has_value else None
        elif arg[1] == "h":
            raise HelpRequested
        elif arg[1] == "v":
            name, rest = "v", arg[2:]
            value = rest[1:] if rest.startswith("=") else rest or None
        else:
            raise FlagError(f"unknown shorthand flag: '{arg[1]}' in {arg}")
        if name == "help":
            raise HelpRequested
        if name in _BOOL_FLAGS:
            _set_switch(flags, name, value)
        elif name in _VALUE_FLAGS:
            if value is None:
                if not args:
                    raise FlagError(f"flag needs an argument: {'-v' if arg == '-v' else '--' + name}")
                value = args.pop(0)
            _set_value(flags, name, value)
        else:
            raise FlagError(f"unknown flag: --{name}")
    return flags
