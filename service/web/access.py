"""Who may use the web chat's POST routes: anyone on loopback, else the bearer of WEB_CHAT_TOKEN."""

from __future__ import annotations

import hmac
import ipaddress

from service.config import ConfigurationError, Settings


def is_loopback(host: str) -> bool:
    """True for `localhost` and addresses in 127.0.0.0/8 or ::1 (`[::1]` too)."""
    name = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        # Any other name may resolve to a public address: treat it as reachable from outside.
        return False


def token_required(settings: Settings) -> bool:
    """The POST routes need `Authorization: Bearer <WEB_CHAT_TOKEN>` off loopback (§10)."""
    return not is_loopback(settings.http_host)


def check_web_chat(settings: Settings) -> None:
    """Refuse to start a web chat that anyone on the network could use to spend the API key."""
    if (
        settings.web_chat
        and token_required(settings)
        and not settings.web_chat_token.get_secret_value()
    ):
        raise ConfigurationError(
            f"WEB_CHAT=true with HTTP_HOST={settings.http_host!r} (not a loopback address) "
            "needs WEB_CHAT_TOKEN: set WEB_CHAT_TOKEN to a long random secret, or set "
            "HTTP_HOST=127.0.0.1"
        )


class BearerGuard:
    """Checks the `Authorization` header against the token in constant time."""

    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def allows(self, authorization: str | None) -> bool:
        if self._expected is None:
            return True
        given = (authorization or "").strip().encode("utf-8", "replace")
        return hmac.compare_digest(given, self._expected)
