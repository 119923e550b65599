"""Secret redaction for log lines and published texts."""

from __future__ import annotations

import logging
from collections.abc import Iterable

MASK = "***"


class Redactor:
    """Replaces every known secret value in a text with `***`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the rendered message of every record."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redact = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        rendered = record.getMessage()
        cleaned = self._redact(rendered)
        if cleaned != rendered or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks carry URLs and headers; render them now so they can be masked too.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, self._redact(formatted)
        return True
