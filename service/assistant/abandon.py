"""After a run was abandoned (cancelled, interrupted): leave its conversation usable, or erase it.

Cancelling the run's task already stops it: the model stream is closed (Responses: no more
tokens; Assistants: the backend also cancels the run server-side), a tool call in flight is
abandoned and its result never sent, and no later turn or tool call starts. What is left is
the conversation, which `settle` puts in order, from the run's `Footprint`:

* ``erase=False`` (cancel, interrupt): the request's user message stays. The Responses API
  drops an aborted turn's input, so when nothing of the request reached the conversation the
  message is stored here; a function call left without output gets one saying it was
  cancelled, so the next turn is accepted. Assistants: the message was added before the run
  and stays; the cancelled run leaves no pending call.
* ``erase=True`` (rollback): everything the request added goes: its user message, function
  calls and their outputs, answers (Responses: conversation item deletion; Assistants: message
  deletion, after the run is cancelled).

Failures here are logged and never change the request's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import openai
from openai import AsyncOpenAI

from service.assistant.footprint import Footprint

log = logging.getLogger("service.assistant")

CANCELLED_OUTPUT = json.dumps({"error": "cancelled: the request was stopped before this returned"})
"""The output given to a function call whose request was cancelled before it returned."""
SETTLE_TIMEOUT = 10.0
RUN_END_WAIT = 3.0
_TERMINAL = frozenset({"completed", "cancelled", "failed", "expired", "incomplete"})


async def settle_responses(
    client: AsyncOpenAI, conversation_id: str, message: str, footprint: Footprint, *, erase: bool
) -> None:
    """Responses API: complete or erase what the abandoned request left in the conversation."""
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            tail = await _added_items(client, conversation_id, footprint)
            if erase:
                for item in tail:
                    await client.conversations.items.delete(
                        str(item["id"]), conversation_id=conversation_id
                    )
                log.info("conversation %s: rolled back %d item(s)", conversation_id, len(tail))
                return
            missing: list[Any] = []
            if not tail:
                missing.append({"type": "message", "role": "user", "content": message})
            answered = {i.get("call_id") for i in tail if i.get("type") == "function_call_output"}
            missing += [
                {
                    "type": "function_call_output",
                    "call_id": i["call_id"],
                    "output": CANCELLED_OUTPUT,
                }
                for i in tail
                if i.get("type") == "function_call" and i.get("call_id") not in answered
            ]
            if missing:
                await client.conversations.items.create(conversation_id, items=missing)
                log.info("conversation %s: stored %d item(s)", conversation_id, len(missing))
    except (openai.APIError, TimeoutError) as exc:
        log.warning("conversation %s: could not settle (%s)", conversation_id, type(exc).__name__)


async def _added_items(
    client: AsyncOpenAI, conversation_id: str, footprint: Footprint
) -> list[dict[str, Any]]:
    """The conversation's items from the first one the request added, oldest first.

    The request held its conversation's turn all along, so everything after its first item is
    its own (its turns' inputs and outputs, and items the service stored for it).
    """
    if not footprint.run_ids:
        return []
    own: set[str] = set()
    for response_id in footprint.run_ids:
        try:
            async for item in client.responses.input_items.list(response_id, limit=100):
                own.add(item.id)
        except openai.NotFoundError:
            continue
    items: list[dict[str, Any]] = []
    async for listed in client.conversations.items.list(conversation_id, order="asc", limit=100):
        items.append(listed.model_dump())
    for index, found in enumerate(items):
        if found.get("id") in own:
            return items[index:]
    return []


async def settle_assistants(
    client: AsyncOpenAI, thread_id: str, footprint: Footprint, *, erase: bool
) -> None:
    """Assistants API: the backend cancelled the run; for ``erase`` delete its messages."""
    if not erase:
        return
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            for run_id in footprint.run_ids:
                await _until_ended(client, thread_id, run_id)
            doomed = list(footprint.message_ids)
            for run_id in footprint.run_ids:
                with _legacy_api():
                    pages = client.beta.threads.messages.list(thread_id, run_id=run_id, limit=100)
                doomed += [m.id async for m in pages]
            for message_id in doomed:
                with _legacy_api():
                    call = client.beta.threads.messages.delete(message_id, thread_id=thread_id)
                try:
                    await call
                except openai.NotFoundError:
                    continue
            log.info("thread %s: rolled back %d message(s)", thread_id, len(doomed))
    except (openai.APIError, TimeoutError) as exc:
        log.warning("thread %s: could not roll back (%s)", thread_id, type(exc).__name__)


def _legacy_api() -> contextlib.AbstractContextManager[None]:
    # Imported when used: the Assistants backend imports this module.
    from service.assistant.assistants import legacy_api

    return legacy_api()


async def _until_ended(client: AsyncOpenAI, thread_id: str, run_id: str) -> None:
    """Wait (briefly) for a cancelled run to stop, so that no message of it comes later."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RUN_END_WAIT
    delay = 0.05
    while True:
        with _legacy_api():
            call = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        run = await call
        if run.status in _TERMINAL or loop.time() > deadline:
            return
        if run.status != "cancelling":
            with _legacy_api():
                cancel = client.beta.threads.runs.cancel(run_id, thread_id=thread_id)
            with contextlib.suppress(openai.BadRequestError):  # it ended meanwhile
                await cancel
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
