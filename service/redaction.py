"""The one redactor: what a secret looks like once it is hidden, for every place that hides one.

    Redactor(secrets)(text)     known secret values and URL passwords → `***`
    Redactor(secrets).value(x)  the same through strings, lists and dicts (tool outputs)
    redact_url(url)             `amqp://user:secret@host/` → `amqp://user:***@host/`
    without_credentials(url)    `amqp://user:secret@host/` → `amqp://host/` (AsyncAPI server)
    RedactingFilter             a logging filter applying a redactor to messages and tracebacks
    redact_http_logs()          httpx2's request log lines without query strings (API keys
                                travel in them), for the tools' HTTP client

Log lines (service/logs.py), the settings log view (service/config.py), tool outputs and
errors (service/tools/registry.py) and the AsyncAPI server URL (service/app.py) all use it.
A leaf module: it imports nothing from the service.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import httpx2

MASK = "***"

_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@"
)
# Secrets shorter than this would mask ordinary words.
MIN_SECRET_LENGTH = 4


class Redactor:
    """Replaces every known secret value, and every password inside a URL, with `***`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if "://" in text:
            text = redact_url(text)
        return text

    def value(self, value: Any) -> Any:
        """`value` with every string inside it redacted (keys included)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        return value


def url_password(url: str) -> str:
    match = _URL_CREDENTIALS.search(url)
    return match.group("pw") if match else ""


def redact_url(url: str) -> str:
    """`amqp://user:secret@host/` → `amqp://user:***@host/` (every URL in the text)."""
    return _URL_CREDENTIALS.sub(rf"\g<scheme>\g<user>:{MASK}@", url)


def without_credentials(url: str) -> str:
    """`amqp://user:secret@host:5672/` → `amqp://host:5672/`."""
    return re.sub(r"(?<=://)[^@/\s]*@", "", url)


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


class _StripUrlQuery(logging.Filter):
    """Replace every `httpx2.URL` argument of a log record by its scheme, host, port and path."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx2.URL) for a in record.args):
            record.args = tuple(
                _without_query(a) if isinstance(a, httpx2.URL) else a for a in record.args
            )
        return True


def _without_query(url: httpx2.URL) -> str:
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


_STRIP_QUERY = _StripUrlQuery()


def redact_http_logs() -> None:
    """Make httpx2's request log line omit query strings and credentials. Idempotent."""
    logger = logging.getLogger("httpx2")
    if _STRIP_QUERY not in logger.filters:
        logger.addFilter(_STRIP_QUERY)
