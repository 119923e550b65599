"""What operators and integrators see of a running service.

    metrics.py     Prometheus: FastStream's RabbitMQ middleware metrics plus the service's own
    milestones.py  the run observer: milestone log lines, metrics and spans of each request
    tracing.py     optional OpenTelemetry (imported only when TRACING_ENABLED)
    health.py      liveness and readiness
    http.py        /healthz, /readyz, /metrics, /docs/asyncapi
    server.py      FastStream's ASGI app served by uvicorn on HTTP_HOST:HTTP_PORT
    asyncapi.py    the AsyncAPI document, with message titles and examples

`Observability` is built once per app by `service.app.create_app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.config import Settings
from service.observability.metrics import ServiceMetrics
from service.observability.milestones import RequestTelemetry, RunObserver

if TYPE_CHECKING:
    from service.observability.tracing import Tracing

__all__ = ["Observability", "RequestTelemetry", "RunObserver", "ServiceMetrics"]


class Observability:
    """The metrics registry, the run observer and, when switched on, tracing."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: ServiceMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.metrics = metrics or ServiceMetrics()
        if tracing is None and settings.tracing_enabled:
            # Imported here: OpenTelemetry is an optional dependency.
            try:
                from service.observability.tracing import Tracing
            except ImportError as exc:
                raise RuntimeError(
                    'TRACING_ENABLED=true needs OpenTelemetry: pip install -e ".[tracing]"'
                ) from exc
            tracing = Tracing.from_settings(settings)
        self.tracing = tracing
        self.telemetry = RequestTelemetry(self.metrics, tracing)

    def broker_middlewares(self) -> list[Any]:
        """FastStream broker middlewares, outermost first: tracing, then Prometheus."""
        middlewares: list[Any] = []
        if self.tracing is not None:
            middlewares.append(self.tracing.broker_middleware())
        middlewares.append(self.metrics.broker_middleware())
        return middlewares

    def shutdown(self) -> None:
        if self.tracing is not None:
            self.tracing.shutdown()
