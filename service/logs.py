"""Logging set-up: plain text for a terminal or one JSON object per line; secrets masked.

A record's extra fields (`log.info("final", extra={"code": "completed"})`) are part of the
line: `key=value` pairs after the message in text, keys of the object in JSON. The request
milestones (`service.observability.milestones`) are logged that way. Every rendered line,
tracebacks included, passes through the redactor before it is written.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import time
from typing import Any, TextIO

from service.config import Settings
from service.redaction import RedactingFilter, Redactor

# Attributes every record has, and extras that are formatting hints rather than data.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
# Fields for machines only: in text the message already says it (`final ...`).
_NOT_IN_TEXT = {"milestone"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The extra fields of a record, in the order they were given."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """`2025-01-01 10:00:00,000 INFO    service.milestones: final message_id=m-42 code=completed`"""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.converter = time.gmtime
        self._redact = redactor or Redactor()

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = {k: v for k, v in record_fields(record).items() if k not in _NOT_IN_TEXT}
        if fields:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        return line

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's extra fields."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redact = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(record_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return self._redact(json.dumps(entry, default=str, ensure_ascii=False))


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if text == "" or any(c.isspace() or c in "\"'=" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class LoopTurnStream:
    """A text stream that, inside a running event loop, writes what one loop turn logged in
    one system call at the end of that turn; outside one, it writes through at once.

    Unbuffered, every log line was its own `write` to stderr, on the path of the request
    that logged it (bench burst: two lines per request before its `started` payload). Lines
    keep their order; whatever is still pending when the process exits is written then."""

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._pending: list[str] = []
        self._flush: asyncio.Handle | None = None
        atexit.register(self._write_pending)

    def write(self, text: str) -> int:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_pending()
            self._target.write(text)
            self._target.flush()
            return len(text)
        self._pending.append(text)
        if self._flush is None:
            self._flush = loop.call_soon(self._write_pending)
        return len(text)

    def flush(self) -> None:
        if self._flush is None:  # nothing waits for the end of a loop turn
            self._target.flush()

    def _write_pending(self) -> None:
        self._flush = None
        if self._pending:
            pending, self._pending = self._pending, []
            text = "".join(pending)
            try:
                self._target.write(text)
                self._target.flush()
            except (OSError, ValueError):  # stderr closed: nowhere left to log to
                pass

    def isatty(self) -> bool:
        return self._target.isatty()


def configure_logging(settings: Settings) -> Redactor:
    """Route every logger through one handler that masks the settings' secrets."""
    redactor = Redactor(settings.secrets())
    stream = LoopTurnStream(sys.stderr)
    handler = logging.StreamHandler(stream)
    formatter: logging.Formatter = (
        JsonFormatter(redactor) if settings.log_format == "json" else TextFormatter(redactor)
    )
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # FastStream's loggers bring their own handlers (and do not propagate): same format, same
    # filter, so every line is text or JSON alike and nothing bypasses the redaction.
    for name in ("faststream", "faststream.access", "faststream.access.rabbit"):
        for own in logging.getLogger(name).handlers:
            own.setFormatter(formatter)
            own.addFilter(RedactingFilter(redactor))
            if isinstance(own, logging.StreamHandler) and own.stream in (
                sys.stderr,
                sys.stdout,
            ):
                # Same stream, same batching: their lines stay in order with ours.
                own.setStream(stream if own.stream is sys.stderr else LoopTurnStream(own.stream))
    for noisy in ("httpx2", "httpcore2", "aiormq", "aio_pika", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return redactor
