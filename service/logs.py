"""Logging set-up: plain text for a terminal or one JSON object per line; secrets masked."""

from __future__ import annotations

import json
import logging
import sys
import time

from service.config import Settings
from service.redaction import RedactingFilter, Redactor


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the record's extra fields."""

    _standard = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._standard and not key.startswith("_"):
                entry[key] = value
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(settings: Settings) -> Redactor:
    """Route every logger through one handler that masks the settings' secrets."""
    redactor = Redactor(settings.secrets())
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Libraries that bring their own handlers get the same filter, so nothing bypasses it.
    for name in ("faststream", "faststream.access", "faststream.access.rabbit"):
        for own in logging.getLogger(name).handlers:
            own.addFilter(RedactingFilter(redactor))
    for noisy in ("httpx2", "httpcore2", "aiormq", "aio_pika", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return redactor
