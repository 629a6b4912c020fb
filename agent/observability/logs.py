"""Logging as operators expect: logfmt on stdout, one line per event.

``configure_logging()`` installs ``LogfmtFormatter`` on the root logger, writing to stdout
(the container log). Every record is one line: ``ts=… level=… logger=… msg=… key=value…``;
extra fields come from ``extra={"kv": {...}}``. A traceback (``log.exception`` or
``exc_info=True``) is folded into one escaped ``exc="…"`` field; the agent attaches
tracebacks only at debug level or to errors it did not expect.

The one-shot commands (``render``, ``explain``) print their result on stdout, so their
warnings go to stderr in a plain ``netpol-agent: warning: …`` form (``plain=True``).
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any, Final

_QUIET_LIBRARIES: Final = ("urllib3", "kubernetes", "pyroute2", "asyncio")
_HANDLER_MARK: Final = "_netpol_agent_handler"


def _logfmt_value(value: str) -> str:
    # Text read back from the kernel may carry undecodable bytes (as lone surrogates):
    # show them as \xNN escapes instead of failing the write to stdout.
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if value and not any(c in value for c in ' "=\\\n\r\t'):
        return value
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """``ts=… level=info logger=netpol-agent.x msg="…" [key=value…] [exc="…"]``, one line.

    Extra fields: ``log.info("synced", extra={"kv": {"rules": 12, "seconds": 0.03}})``.
    """

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        ts = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        parts = [
            f"ts={ts}",
            f"level={record.levelname.lower()}",
            f"logger={_logfmt_value(record.name)}",
            f"msg={_logfmt_value(record.getMessage())}",
        ]
        fields = getattr(record, "kv", None)
        if isinstance(fields, dict):
            parts.extend(f"{key}={_logfmt_value(str(value))}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"exc={_logfmt_value(self.formatException(record.exc_info))}")
        elif record.exc_text:
            parts.append(f"exc={_logfmt_value(record.exc_text)}")
        return " ".join(parts)


class PlainFormatter(logging.Formatter):
    """``netpol-agent: warning: …`` for the one-shot commands' stderr."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"netpol-agent: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and record.levelno <= logging.DEBUG:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(
    verbose: bool = False, stream: Any = None, *, plain: bool = False
) -> logging.Handler:
    """Single-line logs on ``stream`` (default stdout, the container log), INFO or DEBUG.

    Idempotent: a second call replaces the handler the first one installed. Chatty
    libraries (urllib3, kubernetes client) stay at WARNING even with ``verbose``.
    Returns the installed handler.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(PlainFormatter() if plain else LogfmtFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
