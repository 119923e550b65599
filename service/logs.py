"""Logging set-up: plain text for a terminal or one JSON object per line; secrets masked.

A record's extra fields (`log.info("final", extra={"code": "completed"})`) are part of the
line: `key=value` pairs after the message in text, keys of the object in JSON. The request
milestones (`service.observability.milestones`) are logged that way. Every rendered line,
tracebacks included, passes through the redactor before it is written.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

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


def configure_logging(settings: Settings) -> Redactor:
    """Route every logger through one handler that masks the settings' secrets."""
    redactor = Redactor(settings.secrets())
    handler = logging.StreamHandler(sys.stderr)
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
    for noisy in ("httpx2", "httpcore2", "aiormq", "aio_pika", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return redactor
