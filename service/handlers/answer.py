"""Final-event assembly: run a request, stream it to the hub, say how it ended.

`RequestAnswers.answer` streams one held request through the runner to its hub channel and
returns its `completed` or `failed` event; `refuse` is the same for a request that will not run
(its hub error payload and failed event). What happens to the delivery afterwards (publish,
ack, dead-letter) is decided in `service.delivery`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from service.assistant.background import Reattacher
from service.assistant.events import RunEventHandler, RunResult, ToolCall, ToolOutcome
from service.assistant.footprint import Footprint
from service.assistant.runner import Runner
from service.control.registry import CancelControl
from service.coordination.reattach import RunCheckpoint, current_checkpoint
from service.delivery.held import FinalEvent, Held
from service.errors import ServiceError
from service.observability.milestones import RunObserver
from service.pacing import StartPacer
from service.schemas import CompletedEvent, ErrorCode, FailedEvent
from service.sinks.checkpointed_hub import CheckpointedHub
from service.sinks.hub import Hub
from service.sinks.streamer import HubStreamer

log = logging.getLogger("service.requests")


@dataclass(frozen=True, slots=True)
class StreamingOptions:
    flush_ms: int
    flush_chars: int
    hub_send_timeout: float


class RequestAnswers:
    """Runs requests through the runner and the hub streamer; one instance per process."""

    def __init__(
        self,
        *,
        runner: Runner,
        hub: Hub,
        options: StreamingOptions,
        observer: RunObserver | None = None,
        control: CancelControl | None = None,
        reattacher: Reattacher | None = None,
        pacer: StartPacer | None = None,
    ) -> None:
        self._reattacher = reattacher  # OPENAI_BACKGROUND (contract §12)
        self._runner = runner
        self._hub = hub
        self._options = options
        self._observer = observer
        self.control = control
        """Cancel and double texting (§8), set once the delivery layer exists."""
        self._forgetting: set[asyncio.Task[None]] = set()
        self._pacer = pacer or StartPacer()

    async def answer(self, held: Held) -> FinalEvent:
        request, message_id, thread_id = held.request, held.message_id, held.conversation_id
        started_at = time.time()
        checkpoint = await self._checkpoint(held)
        streamer = self._streamer(held, checkpoint)
        outcome: RunResult | ServiceError
        footprint: Footprint | None = None
        self._pacer.arrived()
        try:
            if checkpoint is not None and checkpoint.resumed:
                streamer.resume()  # the sequence another replica began goes on
            else:
                streamer.start()
            # `started` is on its way: the costly part (the model request) waits for its turn,
            # so a burst of requests gets every `started` out first (see service/pacing.py).
            await self._pacer.wait()
            # Milestone logs (accepted, first token, tools, final) come from the observer.
            observed = (
                self._observer.observe(streamer, message_id=message_id, thread_id=thread_id)
                if self._observer is not None
                else streamer
            )
            footprint = Footprint(observed)
            handler = (
                self.control.handler(held, footprint)
                if self.control is not None
                else _EndedEarly(footprint, held)
            )
            token = footprint.activate()
            try:
                outcome = await self._runner.run(
                    thread_id,
                    request.message,
                    handler,
                    text_started=lambda: streamer.text_started,
                )
            finally:
                footprint.deactivate(token)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if held.stop is None or task is None:
                raise
            # Ended early (cancel, interrupt, shutdown after the grace period): the runner
            # has sent the final payload; the request still gets its one final event.
            task.uncancel()
            outcome = held.stop
            # Ended before the runner took over (waiting for its start): no payload yet.
            await _final_payload(streamer, outcome)
            erase = self.control.erases(held) if self.control is not None else None
            if erase is not None and footprint is not None:
                # Ended by a user: before the conversation's next request runs, leave the
                # conversation usable, or (rollback) erase what this request added.
                await self._runner.settle(thread_id, request.message, footprint, erase=erase)
        except Exception:
            # A bug in a hook or the streamer: the user still gets one final payload.
            log.exception("message_id=%s: run failed unexpectedly", message_id)
            outcome = ServiceError(ErrorCode.INTERNAL, "Internal error")
            await _final_payload(streamer, outcome)
        delivered = await streamer.delivered(self._options.hub_send_timeout)
        finished_at = time.time()
        if isinstance(outcome, RunResult):
            return CompletedEvent(
                message_id=message_id,
                channel=request.channel,
                thread_id=thread_id,
                run_id=outcome.run_id,
                text=outcome.text,
                tool_calls=outcome.tool_calls,
                usage=outcome.usage,
                started_at=started_at,
                finished_at=finished_at,
                duration_ms=int((finished_at - started_at) * 1000),
                hub_delivered=delivered,
                hub_error=None if delivered else ErrorCode.WEBSOCKET_UNAVAILABLE,
            )
        return FailedEvent(
            message_id=message_id,
            channel=request.channel,
            thread_id=thread_id,
            code=outcome.code,
            message=outcome.message,
            retryable=outcome.retryable,
            occurred_at=finished_at,
            text=streamer.sent_text,
        )

    async def _checkpoint(self, held: Held) -> RunCheckpoint | None:
        """Background responses: the request's re-attach state (resumed when another replica
        left one), dropped once the request is settled (its final event recorded, acked)."""
        if self._reattacher is None:
            return None
        # A fresh publish of a message_id whose run finished is a deliberate retry: start clean.
        checkpoint = await self._reattacher.open(held.message_id, redelivered=not held.retry)
        current_checkpoint.set(checkpoint)
        forget = asyncio.create_task(_forget_when_settled(held, checkpoint))
        self._forgetting.add(forget)
        forget.add_done_callback(self._forgetting.discard)
        return checkpoint

    def _streamer(self, held: Held, checkpoint: RunCheckpoint | None) -> HubStreamer:
        """A new hub sequence, or, re-attaching, the one another replica began."""
        options = self._options
        hub: Hub = self._hub if checkpoint is None else CheckpointedHub(self._hub, checkpoint)
        if checkpoint is not None and checkpoint.resumed:
            state = checkpoint.state
            streamer = HubStreamer.continuing(
                hub,
                channel=held.request.channel,
                message_id=held.message_id,
                thread_id=held.conversation_id,
                seq=state.hub_seq,
                text=state.text,
                responding=state.responding,
                finished=state.final,
                snapshot_len=state.snapshot_len,
                flush_ms=options.flush_ms,
                flush_chars=options.flush_chars,
            )
        else:
            streamer = HubStreamer(
                hub,
                channel=held.request.channel,
                message_id=held.message_id,
                thread_id=held.conversation_id,
                flush_ms=options.flush_ms,
                flush_chars=options.flush_chars,
            )
        if checkpoint is not None:
            checkpoint.bind(streamer)
        return streamer

    async def refuse(
        self,
        *,
        message_id: str,
        channel: str | None,
        thread_id: str | None,
        error: ServiceError,
    ) -> FailedEvent:
        if channel is not None:
            streamer = HubStreamer(
                self._hub, channel=channel, message_id=message_id, thread_id=thread_id or channel
            )
            streamer.start()
            await _final_payload(streamer, error)
        return FailedEvent(
            message_id=message_id,
            channel=channel,
            thread_id=thread_id,
            code=error.code,
            message=error.message,
            retryable=error.retryable,
            occurred_at=time.time(),
        )


class _EndedEarly(RunEventHandler):
    """Passes every event on; a run cancelled because the request was ended early reports the
    reason it was ended with (e.g. a user's `cancelled`, not retryable) instead of the generic
    cancellation the runner sees."""

    def __init__(self, inner: RunEventHandler, held: Held) -> None:
        self._inner = inner
        self._held = held

    async def on_run_started(self, run_id: str | None) -> None:
        await self._inner.on_run_started(run_id)

    async def on_tool_call_started(self, call: ToolCall) -> None:
        await self._inner.on_tool_call_started(call)

    async def on_tool_call_finished(self, outcome: ToolOutcome) -> None:
        await self._inner.on_tool_call_finished(outcome)

    async def on_text_delta(self, delta: str) -> None:
        await self._inner.on_text_delta(delta)

    async def on_completed(self, result: RunResult) -> None:
        await self._inner.on_completed(result)

    async def on_failed(self, error: ServiceError) -> None:
        stop = self._held.stop
        if stop is not None and error.code is ErrorCode.CANCELLED:
            error = stop
        await self._inner.on_failed(error)


async def _forget_when_settled(held: Held, checkpoint: RunCheckpoint) -> None:
    await held.done.wait()
    await checkpoint.forget()


async def _final_payload(streamer: HubStreamer, error: ServiceError) -> None:
    if streamer.finished:
        return
    try:
        await streamer.on_failed(error)
    except Exception:
        log.exception("could not send the final hub payload")
