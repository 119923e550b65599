"""The HTTP endpoints, served by FastStream's ASGI app on HTTP_HOST:HTTP_PORT.

GET /healthz              200 while the process runs
GET /readyz               200 when broker, consumer and hub are up, else 503 (JSON: the checks)
GET /metrics              Prometheus text format
GET /docs/asyncapi        the AsyncAPI document (YAML); /docs/asyncapi.json as JSON
"""

from __future__ import annotations

import json
from collections.abc import Callable

from faststream.asgi import AsgiResponse, get
from faststream.asgi.handlers import HttpHandler
from faststream.asgi.types import Scope

from service.observability.asyncapi import JSON, to_yaml
from service.observability.health import Readiness
from service.observability.metrics import CONTENT_TYPE, ServiceMetrics

HEALTHZ, READYZ, METRICS, ASYNCAPI = "/healthz", "/readyz", "/metrics", "/docs/asyncapi"


def http_routes(
    *, readiness: Readiness, metrics: ServiceMetrics, asyncapi: Callable[[], JSON]
) -> list[tuple[str, HttpHandler]]:
    """The routes, for `AsgiFastStream(asgi_routes=...)` or `app.mount(...)`."""

    @get(include_in_schema=False)
    async def healthz(scope: Scope) -> AsgiResponse:
        return _json({"status": "ok"})

    @get(include_in_schema=False)
    async def readyz(scope: Scope) -> AsgiResponse:
        checks = await readiness.check()
        ready = all(checks.values())
        return _json({"status": "ready" if ready else "not ready", "checks": checks}, ready)

    @get(include_in_schema=False)
    async def prometheus(scope: Scope) -> AsgiResponse:
        return AsgiResponse(metrics.render(), 200, {"Content-Type": CONTENT_TYPE})

    @get(include_in_schema=False)
    async def asyncapi_yaml(scope: Scope) -> AsgiResponse:
        body = to_yaml(asyncapi()).encode()
        return AsgiResponse(body, 200, {"Content-Type": "application/yaml; charset=utf-8"})

    @get(include_in_schema=False)
    async def asyncapi_json(scope: Scope) -> AsgiResponse:
        return _json(asyncapi())

    return [
        (HEALTHZ, healthz),
        (READYZ, readyz),
        (METRICS, prometheus),
        (ASYNCAPI, asyncapi_yaml),
        (f"{ASYNCAPI}.json", asyncapi_json),
    ]


def _json(data: JSON, ok: bool = True) -> AsgiResponse:
    body = json.dumps(data, ensure_ascii=False).encode()
    return AsgiResponse(body, 200 if ok else 503, {"Content-Type": "application/json"})
