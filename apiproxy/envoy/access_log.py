"""The tcp_proxy's `access_log`: one logger writing text to stdout (the stdout logger, or the file logger on
/dev/stdout), whose format the access log writer (`monitoring.access_log`) can honour. Returns the format.
"""

from __future__ import annotations

from ..documents import clip, show
from ..monitoring.access_log import FormatError, compile_format
from .fields import (
    ACCESS_LOG_FIELDS,
    FILE_ACCESS_LOG,
    FILE_ACCESS_LOG_FIELDS,
    LOG_FORMAT_FIELDS,
    STDOUT_ACCESS_LOG,
    STDOUT_ACCESS_LOG_FIELDS,
    TEXT_FORMAT_SOURCE_FIELDS,
)
from .message import BootstrapError, Message

# Envoy's access log format when a logger has no log_format (HTTP-oriented; the formatter decides).
ENVOY_DEFAULT_ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    "%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)


def read_access_log(tcp_proxy: Message) -> str | None:
    """The format of the tcp_proxy's one access log, or None without one."""
    loggers = list(tcp_proxy.messages("access_log"))
    if not loggers:
        return None
    if len(loggers) > 1:
        raise BootstrapError(loggers[1].path, "a second access log: not supported")
    logger = loggers[0]
    logger.check(ACCESS_LOG_FIELDS)
    typed = logger.require("typed_config")
    kind = typed.type_name()
    if kind == STDOUT_ACCESS_LOG:
        typed.check(STDOUT_ACCESS_LOG_FIELDS)
    elif kind == FILE_ACCESS_LOG:
        typed.check(FILE_ACCESS_LOG_FIELDS)
        if typed.string("path") != "/dev/stdout":
            raise BootstrapError(
                typed.at("path"), f"{show(typed.string('path'))}: not supported (stdout only)"
            )
        if typed.has("format"):
            return _checked(typed.at("format"), typed.string("format"))
    else:
        raise BootstrapError(typed.at("@type"), f"access logger {show(kind)}: not supported (stdout only)")
    log_format = typed.message("log_format")
    if log_format is None:
        return _checked(typed.path, ENVOY_DEFAULT_ACCESS_LOG_FORMAT)
    log_format.check(LOG_FORMAT_FIELDS)
    source = log_format.message("text_format_source")
    if source is not None:
        source.check(TEXT_FORMAT_SOURCE_FIELDS)
        return _checked(source.at("inline_string"), source.string("inline_string"))
    if log_format.has("text_format"):
        return _checked(log_format.at("text_format"), log_format.string("text_format"))
    raise BootstrapError(log_format.path, "expected text_format_source.inline_string or text_format")


def _checked(where: str, fmt: str) -> str:
    """Refuse at start a format the access log cannot write (its formatter is the judge)."""
    try:
        compile_format(fmt)
    except FormatError as error:
        raise BootstrapError(where, f"{clip(str(error))}: not supported") from None
    return fmt
