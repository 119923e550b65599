"""The hub streamer's payload rules (§5) and the hub client's buffer, without a broker."""

from __future__ import annotations

import asyncio
from typing import Any

from service.assistant.events import RunResult, ToolCall, ToolOutcome
from service.errors import RunTimeout
from service.schemas import HubPayload
from service.sinks.hub import WebSocketHub
from service.sinks.streamer import HubStreamer
from tests.fakes.hub import RecordingHub


class ListHub:
    """A `Hub` that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.actions: list[tuple[str, str]] = []

    def subscribe(self, channel: str) -> None:
        self.actions.append(("subscribe", channel))

    def unsubscribe(self, channel: str) -> None:
        self.actions.append(("unsubscribe", channel))

    def send(self, channel: str, payload: dict[str, Any]) -> None:
        self.sent.append(payload)

    async def drain(self, channel: str, timeout: float) -> bool:
        return True


def streamer(hub: ListHub, **options: Any) -> HubStreamer:
    return HubStreamer(hub, channel="conv_1", message_id="m-1", thread_id="conv_1", **options)


async def test_deltas_are_coalesced_by_size_and_add_up_to_the_final_message() -> None:
    hub = ListHub()
    s = streamer(hub, flush_ms=10_000, flush_chars=10)
    s.start()
    for piece in ["Hel", "lo ", "wor", "ld, ", "how ", "are ", "you?"]:
        await s.on_text_delta(piece)
    await s.on_completed(RunResult("resp_1", "Hello world, how are you?", None))
    for payload in hub.sent:
        HubPayload.model_validate(payload)
    assert [p["seq"] for p in hub.sent] == list(range(len(hub.sent)))
    assert [p["status"] for p in hub.sent] == [
        "started",
        "responding",
        "in_progress",
        "in_progress",
        "completed",
    ]
    texts = [p for p in hub.sent if p["type"] == "response"]
    assert (
        "".join(p["delta"] for p in texts) == hub.sent[-1]["message"] == "Hello world, how are you?"
    )
    assert [p["final_message"] for p in hub.sent].count(True) == 1
    assert hub.actions == [("subscribe", "conv_1"), ("unsubscribe", "conv_1")]


async def test_deltas_are_flushed_after_the_time_limit() -> None:
    hub = ListHub()
    s = streamer(hub, flush_ms=20, flush_chars=10_000)
    s.start()
    await s.on_text_delta("a")
    await s.on_text_delta("b")
    assert [p["status"] for p in hub.sent] == ["started", "responding"]
    await asyncio.sleep(0.05)
    assert hub.sent[-1]["delta"] == "ab" and hub.sent[-1]["status"] == "in_progress"


async def test_text_is_flushed_before_a_tool_payload_and_final_is_sent_once() -> None:
    hub = ListHub()
    s = streamer(hub, flush_ms=10_000, flush_chars=10_000)
    s.start()
    await s.on_text_delta("Let me check. ")
    await s.on_tool_call_started(ToolCall("call_1", "get_weather", "{}"))
    await s.on_tool_call_finished(ToolOutcome("call_1", "get_weather", True, 12))
    await s.on_text_delta("Sunny.")
    await s.on_failed(RunTimeout("late"))
    await s.on_completed(RunResult(None, "ignored", None))
    kinds = [(p["type"], p["status"]) for p in hub.sent]
    assert kinds == [
        ("status", "started"),
        ("status", "responding"),
        ("response", "in_progress"),
        ("tool", "processing"),
        ("tool", "processing"),
        ("response", "in_progress"),
        ("timeout", "error"),
    ]
    assert hub.sent[3]["tool"] == {"name": "get_weather", "call_id": "call_1"}
    assert hub.sent[-1]["error"] == {"code": "timeout", "retryable": True}
    assert hub.sent[-1]["error_details"] == "late"


async def test_hub_client_buffers_while_down_and_delivers_in_order_after_reconnect() -> None:
    server = RecordingHub()
    await server.start()
    uri = server.uri
    await server.stop()
    client = WebSocketHub(uri, buffer_size=100, reconnect_min=0.05, reconnect_max=0.1)
    await client.start()
    client.subscribe("c1")
    for i in range(20):
        client.send("c1", {"seq": i})
    assert client.queue_depth == 21
    await server.start()
    assert await client.drain("c1", timeout=5)
    await server.wait_for(lambda: len(server.payloads("c1")) == 20, 5)
    assert [p["seq"] for p in server.payloads("c1")] == list(range(20))
    assert server.subscriber_count("c1") == 1
    await client.close()
    await server.stop()


async def test_hub_client_overflow_drops_oldest_and_reports_the_channel_lossy() -> None:
    client = WebSocketHub("ws://127.0.0.1:9", buffer_size=16, reconnect_min=5, reconnect_max=5)
    await client.start()
    client.subscribe("c1")
    for i in range(40):
        client.send("c1", {"seq": i})
    assert client.queue_depth == 16
    assert await client.drain("c1", timeout=0.05) is False
    await client.close(flush_timeout=0)


async def test_streams_waiting_in_one_window_share_one_flush_and_leave_it_when_flushed_early() -> (
    None
):
    hubs = [ListHub() for _ in range(3)]
    streams = [
        HubStreamer(
            h, channel=f"c{i}", message_id=f"m{i}", thread_id=f"c{i}", flush_ms=40, flush_chars=5
        )
        for i, h in enumerate(hubs)
    ]
    for s in streams:
        s.start()
        await s.on_text_delta("a")  # the first words go out on the next loop turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    for s in streams:
        await s.on_text_delta("b")  # now each waits for the window
    await streams[2].on_text_delta("cdefg")  # over flush_chars: out at once, off the ticker
    assert hubs[2].sent[-1]["delta"] == "bcdefg"
    assert [p["status"] for p in hubs[0].sent][-1] == "in_progress"
    assert hubs[0].sent[-1]["delta"] == "a"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while hubs[0].sent[-1]["delta"] != "b" and loop.time() < deadline:
        await asyncio.sleep(0.005)
    # Both waiting streams flushed by the same tick; the early one sent nothing more.
    assert hubs[0].sent[-1]["delta"] == "b" and hubs[1].sent[-1]["delta"] == "b"
    assert len(hubs[2].sent) == 4
