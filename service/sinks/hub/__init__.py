"""Hub clients: how hub payloads leave the service (contract §5 and §9).

The streamer talks to a `Hub`; which wire protocol is behind it is chosen once, here, by
`hub_from_settings`:

- `HUB_PROTOCOL=envelope` (default): `EnvelopeHub`, the §5 channel-envelope WebSocket hub;
- `HUB_PROTOCOL=nchan`: nginx + nchan, `NchanWebSocketHub` for a `ws://` publisher URL or
  `NchanHttpHub` for `http://`.

Every client shares `BufferedHub`: never blocks the caller, keeps per-channel order, reconnects
with backoff, and holds at most `HUB_BUFFER_BYTES` while the hub is away (module `base`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.sinks.hub.base import BufferedHub, Hub, HubRefused, PayloadMode
from service.sinks.hub.envelope import EnvelopeHub
from service.sinks.hub.masks import install as install_pooled_masks
from service.sinks.hub.nchan import NchanHttpHub, NchanWebSocketHub

if TYPE_CHECKING:
    from service.config import Settings

# The version 1 name of the envelope client.
WebSocketHub = EnvelopeHub

__all__ = [
    "BufferedHub",
    "EnvelopeHub",
    "Hub",
    "HubRefused",
    "NchanHttpHub",
    "NchanWebSocketHub",
    "PayloadMode",
    "WebSocketHub",
    "hub_from_settings",
    "nchan_subscriber_url",
]


def hub_from_settings(settings: Settings) -> BufferedHub:
    """The hub client for `HUB_PROTOCOL` and `WEBSOCKET_URI` (not started yet)."""
    install_pooled_masks()  # masking keys 4 KiB at a time from the OS (module `masks`)
    kind: type[BufferedHub] = EnvelopeHub
    if settings.hub_protocol == "nchan":
        http = settings.websocket_uri.startswith(("http://", "https://"))
        kind = NchanHttpHub if http else NchanWebSocketHub
    return kind(
        settings.websocket_uri,
        token=settings.websocket_token.get_secret_value() or None,
        buffer_size=settings.hub_buffer_size,
        buffer_bytes=settings.hub_buffer_bytes,
        reconnect_min=settings.hub_reconnect_min,
        reconnect_max=settings.hub_reconnect_max,
        payload_mode=settings.hub_payload_mode,
    )


def nchan_subscriber_url(settings: Settings, channel: str) -> str:
    """Where a browser (or the terminal chat) subscribes to `channel` on an nchan hub:
    `<HUB_PUBLIC_URL>/<channel>`; with HUB_PUBLIC_URL unset, the publisher URL with its last
    `/pub` turned into `/sub` (the layout of deploy/nginx/nchan.conf). http(s) becomes ws(s)."""
    base = (settings.hub_public_url or settings.websocket_uri).rstrip("/")
    if not settings.hub_public_url and base.endswith("/pub"):
        base = base[: -len("/pub")] + "/sub"
    for plain, ws in (("http://", "ws://"), ("https://", "wss://")):
        if base.startswith(plain):
            base = ws + base[len(plain) :]
    return f"{base}/{channel}"
