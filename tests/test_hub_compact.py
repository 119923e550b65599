"""HUB_PAYLOAD_MODE=compact (§9): deltas only, snapshots on the geometric schedule, the whole
answer on the final payload; `full` unchanged. Streamer unit tests without a broker, and one
run of the real service in compact mode."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from service.assistant.events import RunResult
from service.errors import RunTimeout
from service.schemas import HubPayload
from service.sinks.streamer import HubStreamer
from tests.conftest import Fakes, start_stack
from tests.fakes.hub import answer_of, check_payload_sequence
from tests.fakes.script import Text


class ListHub:
    """A `Hub` that keeps what it is given, with a payload mode like the real clients."""

    def __init__(self, payload_mode: str = "full") -> None:
        self.payload_mode = payload_mode
        self.sent: list[dict[str, Any]] = []

    def subscribe(self, channel: str) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    def send(self, channel: str, payload: dict[str, Any]) -> None:
        self.sent.append(json.loads(json.dumps(payload)))

    async def drain(self, channel: str, timeout: float) -> bool:
        return True


async def stream(mode: str, pieces: list[str], flush_chars: int = 1) -> list[dict[str, Any]]:
    hub = ListHub(mode)
    streamer = HubStreamer(
        hub, channel="c", message_id="m", thread_id="c", flush_ms=10_000, flush_chars=flush_chars
    )
    streamer.start()
    for piece in pieces:
        await streamer.on_text_delta(piece)
    await streamer.on_completed(RunResult("r", "".join(pieces), None))
    for payload in hub.sent:
        HubPayload.model_validate(payload)
    return hub.sent


def in_progress(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in payloads if p["status"] == "in_progress"]


async def test_compact_snapshots_exactly_past_1000_then_at_each_doubling() -> None:
    # 100-character pieces: lengths 100, 200, ..., 9000; one payload per piece.
    payloads = await stream("compact", ["x" * 99 + "\n"] * 90)
    check_payload_sequence(payloads, "compact")
    snapshots = [len(p["message"]) for p in in_progress(payloads) if p.get("snapshot")]
    # Past 1,000 is 1,100 (1,000 is not past); then >= 2,200, >= 4,400, >= 8,800.
    assert snapshots == [1100, 2200, 4400, 8800]
    others = [p for p in in_progress(payloads) if not p.get("snapshot")]
    assert all(p["message"] == "" and "snapshot" not in p for p in others)
    assert payloads[-1]["message"] == ("x" * 99 + "\n") * 90
    assert "snapshot" not in payloads[-1]


async def test_compact_counts_code_points_not_bytes_or_utf16_units() -> None:
    # Astral characters: 1 code point, 4 UTF-8 bytes, 2 UTF-16 units. 1,001 of them in one
    # payload is the first snapshot; 1,000 is not.
    at_1000 = await stream("compact", ["😀" * 1000])
    assert not in_progress(at_1000)[0].get("snapshot")
    past = await stream("compact", ["😀" * 1000, "😀"])
    assert [bool(p.get("snapshot")) for p in in_progress(past)] == [False, True]
    check_payload_sequence(past, "compact")


async def test_compact_snapshot_carries_its_own_delta_and_a_big_delta_can_jump_doublings() -> None:
    payloads = await stream("compact", ["a" * 500, "b" * 5000, "c" * 100, "d" * 5000])
    steps = in_progress(payloads)
    assert [bool(p.get("snapshot")) for p in steps] == [False, True, False, False]
    assert steps[1]["message"] == "a" * 500 + "b" * 5000  # 5,500: the next is due at 11,000
    assert steps[1]["delta"] == "b" * 5000
    check_payload_sequence(payloads, "compact")


async def test_short_compact_answer_has_no_snapshot_and_final_carries_the_answer() -> None:
    payloads = await stream("compact", ["Hello", " world"])
    assert not any(p.get("snapshot") for p in payloads)
    assert payloads[-1]["message"] == "Hello world" == answer_of(payloads)


async def test_full_mode_stays_the_default_and_never_sends_snapshot() -> None:
    hub = ListHub()
    del hub.payload_mode  # a hub that does not say: full mode
    streamer = HubStreamer(hub, channel="c", message_id="m", thread_id="c", flush_chars=1)
    streamer.start()
    for piece in ["y" * 700] * 5:
        await streamer.on_text_delta(piece)
    await streamer.on_completed(RunResult("r", "y" * 3500, None))
    check_payload_sequence(hub.sent, "full")
    assert [len(p["message"]) for p in in_progress(hub.sent)] == [700, 1400, 2100, 2800, 3500]


async def test_compact_error_after_text_keeps_the_rules_and_the_partial_answer_in_deltas() -> None:
    hub = ListHub("compact")
    streamer = HubStreamer(hub, channel="c", message_id="m", thread_id="c", flush_chars=1)
    streamer.start()
    await streamer.on_text_delta("z" * 1500)
    await streamer.on_text_delta("tail")
    await streamer.on_failed(RunTimeout("late"))
    check_payload_sequence(hub.sent, "compact")
    assert answer_of(hub.sent) == "z" * 1500 + "tail"
    assert hub.sent[-1]["type"] == "timeout" and "snapshot" not in hub.sent[-1]


@pytest.mark.parametrize("mode", ["full", "compact"])
async def test_compact_bytes_grow_linearly_and_full_bytes_quadratically(mode: str) -> None:
    def size(payloads: list[dict[str, Any]]) -> int:
        return sum(len(json.dumps(p)) for p in payloads)

    short = await stream(mode, ["word "] * 200, flush_chars=20)  # 1,000 characters
    long = await stream(mode, ["word "] * 4000, flush_chars=20)  # 20,000 characters
    ratio = (size(long) / 20_000) / (size(short) / 1_000)
    if mode == "compact":
        assert ratio <= 1.25, ratio
    else:
        assert ratio > 5, ratio


def test_clients_rebuild_the_answer_in_both_modes_and_repair_a_missed_payload() -> None:
    from service.chat import AnswerText

    def payload(delta: str, message: str, **extra: Any) -> dict[str, Any]:
        base = {"type": "response", "status": "in_progress", "delta": delta, "message": message}
        return {**base, **extra}

    compact = AnswerText()
    assert compact.add({"type": "status", "status": "responding", "message": "Responding"}) == ""
    assert compact.add(payload("Hel", "")) == "Hel"
    # "lo " was missed; the snapshot carries the whole answer and fills the gap.
    assert compact.add(payload("wor", "Hello wor", snapshot=True)) == "lo wor"
    assert compact.add(payload("ld", "")) == "ld"
    assert compact.text == "Hello world"
    full = AnswerText()
    for text in ["Hel", "Hello", "Hello world"]:
        full.add(payload(text[-2:], text))
    assert full.text == "Hello world"


def test_chat_subscribes_to_nchan_where_browsers_do() -> None:
    from service.chat import nchan_payload
    from service.config import Settings
    from service.sinks.hub import nchan_subscriber_url

    derived = Settings(hub_protocol="nchan", websocket_uri="http://hub:8090/pub")
    assert nchan_subscriber_url(derived, "conv_1") == "ws://hub:8090/sub/conv_1"
    public = Settings(
        hub_protocol="nchan", websocket_uri="ws://x/pub", hub_public_url="wss://chat.example/sub"
    )
    assert nchan_subscriber_url(public, "c") == "wss://chat.example/sub/c"
    assert nchan_payload('id: 17:0\ncontent-type: application/json\n\n{"seq":0}') == '{"seq":0}'
    assert nchan_payload('{"seq":1}') == '{"seq":1}'


async def test_service_in_compact_mode_sends_section_9_payloads_to_the_envelope_hub(
    fakes: Fakes, log_dir: Path
) -> None:
    async with start_stack(fakes, log_dir, "responses", HUB_PAYLOAD_MODE="compact") as stack:
        tag = uuid.uuid4().hex[:8]
        words = [f"c{i} " for i in range(800)]  # ~4,000 characters: three snapshots
        stack.fakes.openai.script(tag, [[Text(*words)]])
        body = stack.request(f"compact {tag}", message_id=f"m-{tag}")
        await stack.broker.publish(body)
        payloads = await stack.fakes.hub_final(body["channel"])
        event = await stack.broker.wait_event(f"m-{tag}")
        assert check_payload_sequence(payloads, "compact") == "".join(words) == event["text"]
        assert sum(1 for p in payloads if p.get("snapshot")) >= 2
        assert event["hub_delivered"] is True
