"""The parts of contract §12, each on its own: the fake's background mode (the real SDK against
it), the re-attach stores (in-process and Redis pass the same tests), the rule that state is
written before the payloads it describes, and cancel reaching the response server-side."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest

from service.assistant.background import BackgroundRun, Reattacher
from service.assistant.events import RunEventHandler, RunResult
from service.assistant.retry import RetryPolicy
from service.coordination.reattach import (
    InProcessReattachStore,
    ReattachState,
    ReattachStore,
    ReattachTurn,
    RedisReattachStore,
    RunCheckpoint,
    ToolRun,
    current_checkpoint,
)
from service.sinks.checkpointed_hub import CheckpointedHub
from service.sinks.streamer import HubStreamer
from tests.conftest import Fakes
from tests.fakes.script import Text

REAL = Path(os.environ.get("REAL_STREAMS", "/work/shared/real_streams"))
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def client(fakes: Fakes) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(api_key="k", base_url=fakes.openai.base_url, max_retries=0)
    yield sdk
    await sdk.close()


# -- the fake ----------------------------------------------------------------------------------


def _sse_types(path: Path) -> list[tuple[int, str]]:
    events = []
    for line in path.read_text().splitlines():
        if line.startswith("data: "):
            data = json.loads(line[6:])
            events.append((data["sequence_number"], data["type"]))
    return events


async def test_fake_background_stream_has_the_real_event_order_and_resumes_after_n(
    fakes: Fakes, client: openai.AsyncOpenAI
) -> None:
    t = tag()
    fakes.openai.script(f"two plus two {t}", [[Text("2", " +", " 2", " equals", " 4.")]])
    stream = await client.responses.create(
        model="m", input=f"two plus two {t}", background=True, stream=True
    )
    seen = [(event.sequence_number, event.type) async for event in stream]
    real = _sse_types(REAL / "responses_background_stream_gpt4o_pydanticai_2026-02.sse")
    # The same events in the same order (text in 5 deltas here, 8 there), numbered from 0.
    delta = "response.output_text.delta"
    assert [k for _, k in seen if k != delta] == [k for _, k in real if k != delta]
    assert [n for n, _ in seen] == list(range(len(seen)))
    (response_id,) = fakes.openai.background.created(None)[-1:]
    resumed = await client.responses.retrieve(response_id, stream=True, starting_after=0)
    again = [(event.sequence_number, event.type) async for event in resumed]
    real_resume = _sse_types(REAL / "responses_background_resume_get_gpt4o_pydanticai_2026-02.sse")
    assert again[0] == real_resume[0] == (1, "response.queued")
    assert again == seen[1:]
    status = await client.responses.retrieve(response_id)
    assert status.status == "completed" and status.background is True


async def test_fake_background_generation_goes_on_after_the_client_leaves(
    fakes: Fakes, client: openai.AsyncOpenAI
) -> None:
    t = tag()
    chunks = [f"w{i} " for i in range(20)]
    fakes.openai.script(f"leave {t}", [[Text(*chunks, interval=0.01)]])
    stream = await client.responses.create(
        model="m", input=f"leave {t}", conversation=f"conv_{t}", background=True, stream=True
    )
    async for event in stream:
        if event.type == "response.output_text.delta":
            last = event.sequence_number
            break
    await stream.close()
    (response_id,) = fakes.openai.background.created(f"conv_{t}")
    rest = await client.responses.retrieve(response_id, stream=True, starting_after=last)
    deltas = [e.delta async for e in rest if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "".join(chunks[1:])
    assert fakes.openai.background.generated_text(f"conv_{t}") == "".join(chunks)
    assert fakes.openai.background.tokens(f"conv_{t}") == len(chunks)


async def test_fake_cancel_stops_generation_and_a_finished_response_cannot_be_cancelled(
    fakes: Fakes, client: openai.AsyncOpenAI
) -> None:
    t = tag()
    fakes.openai.script(f"cancel {t}", [[Text(*["x "] * 200, interval=0.01)]])
    stream = await client.responses.create(
        model="m", input=f"cancel {t}", conversation=f"conv_{t}", background=True, stream=True
    )
    (response_id,) = fakes.openai.background.created(f"conv_{t}")
    cancelled = await client.responses.cancel(response_id)
    assert cancelled.status == "cancelled"
    _ = [event async for event in stream]  # the stream ends
    tokens = fakes.openai.background.tokens(f"conv_{t}")
    assert tokens < 200
    again = await client.responses.cancel(response_id)
    assert again.status == "cancelled"
    fakes.openai.script(f"done {t}", [[Text("ok")]])
    done = await client.responses.create(
        model="m", input=f"done {t}", conversation=f"conv_d{t}", background=True, stream=True
    )
    _ = [event async for event in done]
    (finished,) = fakes.openai.background.created(f"conv_d{t}")
    with pytest.raises(openai.BadRequestError):
        await client.responses.cancel(finished)
    fakes.openai.background.expire(finished)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(finished)


# -- the stores --------------------------------------------------------------------------------


@pytest.fixture(params=["in-process", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ReattachStore]:
    if request.param == "in-process":
        found: ReattachStore = InProcessReattachStore(ttl=5)
        yield found
        await found.close()
        return
    prefix = f"test_bg_{tag()}"
    redis_store = RedisReattachStore.from_url(REDIS_URL, prefix=prefix, ttl=5)
    yield redis_store
    import redis.asyncio

    cleanup = redis.asyncio.Redis.from_url(REDIS_URL)
    keys = [k async for k in cleanup.scan_iter(match=f"{prefix}:*")]
    if keys:
        await cleanup.delete(*keys)
    await cleanup.aclose()
    await redis_store.close()


async def test_store_round_trips_a_state_and_appends_only_new_text(store: ReattachStore) -> None:
    state = ReattachState(hub_seq=3, text="Hello", responding=True)
    state.turns.append(ReattachTurn("resp_1", after=7, calls=[("c1", "t", "{}")], usage=(1, 2)))
    state.tools["c1"] = ToolRun("t", '{"ok": 1}', True, 12)
    state.announced.append("c1")
    await store.save("m1", state, 0)
    state.text += ", wörld"
    state.hub_seq = 4
    await store.save("m1", state, len("Hello"))
    loaded = await store.load("m1")
    assert loaded == state
    await store.drop("m1")
    assert await store.load("m1") is None
    assert await store.load("never") is None


# -- state before payloads ---------------------------------------------------------------------


class _NotingStore(InProcessReattachStore):
    """Keeps a copy of the last state written."""

    last: ReattachState | None = None

    async def save(self, message_id: str, state: ReattachState, stored_text: int) -> None:
        await super().save(message_id, state, stored_text)
        self.last = await self.load(message_id)


class _RecordingHub:
    """A hub that notes, for each payload, what the store held when it was sent."""

    def __init__(self, store: _NotingStore) -> None:
        self.sent: list[tuple[dict[str, Any], ReattachState | None]] = []
        self._store = store

    payload_mode: Literal["full", "compact"] = "full"

    def subscribe(self, channel: str) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    def send(self, channel: str, payload: dict[str, Any]) -> None:
        self.sent.append((payload, self._store.last))

    async def drain(self, channel: str, timeout: float) -> bool:
        return True


async def test_each_payload_leaves_only_after_a_state_that_covers_it_was_written() -> None:
    store = _NotingStore()
    hub = _RecordingHub(store)
    checkpoint = RunCheckpoint("m", store)
    streamer = HubStreamer(
        CheckpointedHub(hub, checkpoint), channel="c", message_id="m", thread_id="c", flush_ms=5
    )
    checkpoint.bind(streamer)
    streamer.start()
    await checkpoint.begin_turn(0, "resp_x")
    for seq, word in enumerate(["a ", "b ", "c ", "d "], start=5):
        checkpoint.text_delta(0, seq, word)
        await streamer.on_text_delta(word)
        await asyncio.sleep(0.01)
    await streamer.delivered(1)
    assert hub.sent
    for payload, state in hub.sent:
        assert state is not None
        assert state.hub_seq > payload["seq"]
        assert state.text.startswith(payload["message"]) or payload["type"] != "response"
    last = hub.sent[-1][1]
    assert last is not None and last.text == "a b c d " and last.turns[0].after == 8


async def test_a_continuing_streamer_goes_on_with_the_sequence_without_a_second_started() -> None:
    hub = _ListHub()
    sent = hub.sent
    streamer = HubStreamer.continuing(
        hub, channel="c", message_id="m", thread_id="c", seq=7, text="Hello", responding=True
    )
    streamer.resume()
    await streamer.on_text_delta(", world")
    await asyncio.sleep(0)  # the first text after a re-attach is not held for the window
    assert [p["seq"] for p in sent] == [7]
    assert sent[0]["message"] == "Hello, world" and sent[0]["delta"] == ", world"
    await streamer.on_completed(_result("Hello, world"))
    assert [p["seq"] for p in sent] == [7, 8] and sent[-1]["final_message"]
    assert all(p["status"] not in ("started", "responding") for p in sent)


async def test_a_continuing_streamer_keeps_the_compact_snapshot_schedule() -> None:
    hub = _ListHub()
    hub.payload_mode = "compact"
    streamer = HubStreamer.continuing(
        hub,
        channel="c",
        message_id="m",
        thread_id="c",
        seq=40,
        text="x" * 1500,
        responding=True,
        snapshot_len=1100,
        flush_ms=0,
    )
    streamer.resume()
    await streamer.on_text_delta("y" * 600)  # 2,100 chars: not yet twice 1,100
    await streamer.on_text_delta("z" * 200)  # 2,300: a snapshot
    assert [p.get("snapshot", False) for p in hub.sent] == [False, True]
    assert (
        hub.sent[0]["message"] == ""
        and hub.sent[1]["message"] == "x" * 1500 + "y" * 600 + "z" * 200
    )
    assert streamer.snapshot_len == 2300


class _ListHub:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    payload_mode: Literal["full", "compact"] = "full"

    def subscribe(self, channel: str) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    def send(self, channel: str, payload: dict[str, Any]) -> None:
        self.sent.append(payload)

    async def drain(self, channel: str, timeout: float) -> bool:
        return True


def _result(text: str) -> RunResult:
    return RunResult("resp_1", text, None)


# -- cancel ------------------------------------------------------------------------------------


async def test_cancelling_a_background_run_cancels_the_response_server_side(
    fakes: Fakes, client: openai.AsyncOpenAI
) -> None:
    t = tag()
    conversation = f"conv_{t}"
    fakes.openai.script(f"stop me {t}", [[Text(*["y "] * 300, interval=0.01)]])
    handler = _TextHandler()
    checkpoint = RunCheckpoint(f"m-{t}", InProcessReattachStore())
    current_checkpoint.set(checkpoint)
    run = BackgroundRun(
        client,
        model="m",
        instructions="",
        tools=[],
        toolbox=_NoTools(),
        retry=RetryPolicy(attempts=2, backoff=0.01),
        idle_timeout=5,
        thread_id=conversation,
        handler=handler,
    )
    task = asyncio.create_task(run.run(f"stop me {t}"))
    while len(handler.text) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (response_id,) = fakes.openai.background.created(conversation)
    assert fakes.openai.background.status(response_id) == "cancelled"
    assert fakes.openai.background.tokens(conversation) < 300


async def test_a_redelivered_request_whose_response_expired_starts_over(
    fakes: Fakes, client: openai.AsyncOpenAI
) -> None:
    store = InProcessReattachStore()
    state = ReattachState(hub_seq=4, text="abc", responding=True)
    state.turns.append(ReattachTurn("resp_gone_" + tag(), after=9))
    await store.save("m", state, 0)
    reattacher = Reattacher(store, client)
    checkpoint = await reattacher.open("m", redelivered=True)
    assert not checkpoint.resumed and checkpoint.state.hub_seq == 0
    assert await store.load("m") is None
    await store.save("m", state, 0)
    fresh = await reattacher.open("m", redelivered=False)  # a deliberate re-publish
    assert not fresh.resumed


class _TextHandler(RunEventHandler):
    def __init__(self) -> None:
        self.text: list[str] = []

    async def on_text_delta(self, delta: str) -> None:
        self.text.append(delta)


class _NoTools:
    def responses_definitions(self) -> list[dict[str, Any]]:
        return []

    def assistants_definitions(self) -> list[dict[str, Any]]:
        return []

    async def call_many(self, calls: Any) -> Any:
        raise AssertionError("no tool should run")
