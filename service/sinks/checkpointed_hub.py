"""The hub as one request's streamer sees it when its run can be re-attached (contract §12).

Every operation (subscribe, payload, unsubscribe) waits in the request's `RunCheckpoint` until
a write of the re-attach state that covers it has finished, then goes to the shared hub in
order: nothing reaches the hub that another replica would not know was sent.
"""

from __future__ import annotations

import functools
from typing import Any

from service.coordination.reattach import RunCheckpoint
from service.sinks.hub import Hub, PayloadMode


class CheckpointedHub:
    """A `Hub` for one request: the shared `hub`, behind the request's `checkpoint`."""

    def __init__(self, hub: Hub, checkpoint: RunCheckpoint) -> None:
        self._hub = hub
        self._checkpoint = checkpoint
        self.payload_mode: PayloadMode = hub.payload_mode

    def subscribe(self, channel: str) -> None:
        self._checkpoint.defer(functools.partial(self._hub.subscribe, channel))

    def send(self, channel: str, payload: dict[str, Any]) -> None:
        error = payload.get("error")
        if payload.get("final_message") and isinstance(error, dict):
            self._checkpoint.final_error(
                str(error.get("code")),
                str(payload.get("error_details") or payload.get("message") or ""),
                bool(error.get("retryable")),
            )
        self._checkpoint.defer(functools.partial(self._hub.send, channel, payload))

    def unsubscribe(self, channel: str) -> None:
        self._checkpoint.defer(functools.partial(self._hub.unsubscribe, channel))

    async def drain(self, channel: str, timeout: float) -> bool:
        await self._checkpoint.settled()
        return await self._hub.drain(channel, timeout)
