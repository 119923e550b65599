"""The web chat (contract §10): a page served by the service, and the two ingress routes.

`web_routes(...)` returns the ASGI routes the app mounts when `WEB_CHAT=true`:

    GET  /chat                 the page (HTML); /chat/chat.js, /chat/chat.css beside it
    GET  /chat/config.json     where the page finds the hub, and whether it needs a token
    POST /v1/requests          a §4 chat request → EXCHANGE_NAME / ROUTING_KEY, 202
    POST /v1/cancel            a §8 cancel → EXCHANGE_NAME / <ROUTING_KEY>.cancel, 202
    POST /v1/conversations     a new conversation (Responses) or thread (Assistants) for the page

The page is a client of the service's public interfaces only: it publishes through the two
POST routes, exactly as upstream would, and follows the answer on the hub like any browser.
"""

from service.web.access import check_web_chat, is_loopback
from service.web.routes import web_routes

__all__ = ["check_web_chat", "is_loopback", "web_routes"]
