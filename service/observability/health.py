"""Liveness and readiness of one service process.

Liveness (`/healthz`) is "the process answers". Readiness (`/readyz`) is "requests sent now
will be served": the RabbitMQ connection is up, the consumer has started (and is not shutting
down), and the WebSocket hub connection is open. While the hub is down the service still
consumes and buffers frames, but browsers see nothing, so a load balancer or an operator
should know.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from service.observability.metrics import HubState


class Pingable(Protocol):
    async def ping(self, timeout: float | None) -> bool: ...


class HubView(Protocol):
    @property
    def hub(self) -> HubState | None: ...


class Readiness:
    """The readiness checks; `started`/`stopping` are the app's after-startup/shutdown hooks."""

    def __init__(
        self,
        broker: Pingable,
        runtime: HubView,
        *,
        ping_timeout: float = 1.0,
        consumers: Callable[[], bool] | None = None,
    ) -> None:
        self._broker = broker
        self._runtime = runtime
        self._ping_timeout = ping_timeout
        self._consuming = False
        # Replicas: true once this replica consumes every shard assigned to it.
        self._consumers = consumers

    def started(self) -> None:
        self._consuming = True

    def stopping(self) -> None:
        self._consuming = False

    async def check(self) -> dict[str, bool]:
        """Each check by name; ready when all are true."""
        hub = self._runtime.hub
        return {
            "broker": await self._broker.ping(self._ping_timeout),
            "consuming": self._consuming and (self._consumers is None or self._consumers()),
            "hub": hub is not None and hub.connected,
        }
