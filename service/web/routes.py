"""The web chat's routes, built from settings, the broker and the topology."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

from faststream.asgi import AsgiResponse
from faststream.rabbit import RabbitBroker

from service.config import Settings
from service.topology import Topology
from service.web.access import BearerGuard, token_required
from service.web.http import (
    SECURITY_HEADERS,
    BodyTooLarge,
    Handler,
    HttpRequest,
    Route,
    json_response,
)
from service.web.ingress import BrokerUnavailable, Ingress, InvalidBody

log = logging.getLogger("service")

PAGE, SCRIPT, STYLE, CONFIG = "/chat", "/chat/chat.js", "/chat/chat.css", "/chat/config.json"
REQUESTS, CANCEL, CONVERSATIONS = "/v1/requests", "/v1/cancel", "/v1/conversations"

STATIC = {
    PAGE: ("chat.html", "text/html; charset=utf-8"),
    SCRIPT: ("chat.js", "text/javascript; charset=utf-8"),
    STYLE: ("chat.css", "text/css; charset=utf-8"),
}

# Everything the page loads comes from the service; it connects to the hub and to us only.
PAGE_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss: http: https:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

ConversationFactory = Callable[[Settings], Awaitable[str]]


def web_routes(
    settings: Settings,
    broker: RabbitBroker,
    topology: Topology,
    create_conversation: ConversationFactory | None = None,
) -> list[tuple[str, Route]]:
    """The routes to mount when WEB_CHAT=true (see the package docstring)."""
    ingress = Ingress(broker, topology.requests_exchange, settings.routing_key)
    needs_token = token_required(settings)
    guard = BearerGuard(settings.web_chat_token.get_secret_value() if needs_token else None)
    config = {
        "hub_url": hub_public_url(settings),
        "hub_protocol": settings.hub_protocol,
        "token_required": needs_token,
    }
    routes: list[tuple[str, Route]] = [
        (path, Route({"GET": _static(name, content_type)}))
        for path, (name, content_type) in STATIC.items()
    ]

    async def get_config(request: HttpRequest) -> AsgiResponse:
        return json_response(config)

    async def post_request(request: HttpRequest) -> AsgiResponse:
        try:
            accepted = await ingress.request(await request.body())
        except (InvalidBody, BodyTooLarge) as exc:
            return _invalid(exc)
        except BrokerUnavailable:
            return _unavailable()
        return json_response({"message_id": accepted.message_id, "channel": accepted.channel}, 202)

    async def post_cancel(request: HttpRequest) -> AsgiResponse:
        try:
            cancel = await ingress.cancel(await request.body())
        except (InvalidBody, BodyTooLarge) as exc:
            return _invalid(exc)
        except BrokerUnavailable:
            return _unavailable()
        return json_response({"message_id": cancel.message_id, "channel": cancel.channel}, 202)

    async def post_conversation(request: HttpRequest) -> AsgiResponse:
        factory = create_conversation or _create_conversation
        try:
            channel = await factory(settings)
        except Exception as exc:
            log.warning("web chat: could not create a conversation: %s", type(exc).__name__)
            detail = f"Could not create a conversation ({type(exc).__name__})"
            return json_response({"detail": detail}, 502)
        return json_response({"channel": channel}, 201)

    routes += [
        (CONFIG, Route({"GET": get_config})),
        (REQUESTS, Route({"POST": _guarded(guard, post_request)})),
        (CANCEL, Route({"POST": _guarded(guard, post_cancel)})),
        (CONVERSATIONS, Route({"POST": _guarded(guard, post_conversation)})),
    ]
    return routes


def hub_public_url(settings: Settings) -> str:
    """Where browsers subscribe: HUB_PUBLIC_URL, else WEBSOCKET_URI (for nchan, its `/pub`
    publisher location turned into `/sub`), as ws(s)://, without credentials."""
    url = settings.hub_public_url or settings.websocket_uri
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    netloc = parts.netloc.rpartition("@")[2]
    path = parts.path
    if not settings.hub_public_url and settings.hub_protocol == "nchan":
        trimmed = path.rstrip("/")
        if trimmed.endswith("/pub"):
            path = trimmed[: -len("pub")] + "sub"
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def _guarded(guard: BearerGuard, handler: Handler) -> Handler:
    async def checked(request: HttpRequest) -> AsgiResponse:
        if not guard.allows(request.headers.get("authorization")):
            return json_response(
                {"detail": "Missing or wrong token: send Authorization: Bearer <WEB_CHAT_TOKEN>"},
                401,
                {"WWW-Authenticate": 'Bearer realm="web chat"'},
            )
        return await handler(request)

    return checked


def _invalid(exc: Exception) -> AsgiResponse:
    if isinstance(exc, BodyTooLarge):
        return json_response({"detail": "Invalid request: body larger than 1 MiB"}, 422)
    return json_response({"detail": str(exc)}, 422)


def _unavailable() -> AsgiResponse:
    detail = "RabbitMQ is not reachable right now: try again in a moment"
    return json_response({"detail": detail}, 503, {"Retry-After": "5"})


def _static(name: str, content_type: str) -> Handler:
    body = resources.files("service.web").joinpath("static", name).read_bytes()
    headers = {**SECURITY_HEADERS, "Content-Type": content_type}
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = PAGE_POLICY

    async def serve(request: HttpRequest) -> AsgiResponse:
        return AsgiResponse(body, 200, headers)

    return serve


async def _create_conversation(settings: Settings) -> str:
    # The terminal chat's own helper: a conversation (Responses) or a thread (Assistants).
    from service.chat import create_conversation

    return await create_conversation(settings)
