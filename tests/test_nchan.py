"""HUB_PROTOCOL=nchan against the real nginx + nchan the project ships (deploy/nginx/), started
by the tests on their own port and prefix: browsers' WebSocket (ws+meta.nchan) and EventSource
subscribers, resume with the last message id, late readers, nginx restarts, a refused token."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import ValidationError

from service.assistant.events import RunResult
from service.schemas import CHANNEL_PATTERN, ChatRequest
from service.sinks.hub import BufferedHub, NchanHttpHub, NchanWebSocketHub
from service.sinks.streamer import HubStreamer
from tests.conftest import Fakes, Stack, start_stack
from tests.fakes.hub import answer_of, check_payload_sequence
from tests.fakes.script import Text
from tests.nchan import DEPLOY, NchanHub, sse_subscribe, ws_subscribe

TOKEN = "nchan-token-SECRET-5"
PUBLISHERS = ("ws", "http")


@pytest.fixture(scope="module")
def nchan() -> Iterator[NchanHub]:
    with NchanHub.start(token=TOKEN) as hub:
        yield hub


def publisher(nchan: NchanHub, kind: str, token: str = TOKEN) -> BufferedHub:
    if kind == "ws":
        return NchanWebSocketHub(
            nchan.publish_url, token=token, payload_mode="compact", reconnect_min=0.05
        )
    return NchanHttpHub(
        nchan.http_publish_url, token=token, payload_mode="compact", reconnect_min=0.05
    )


def fresh_channel() -> str:
    return f"conv_{uuid.uuid4().hex[:12]}"


def answer_streamer(hub: BufferedHub, channel: str) -> HubStreamer:
    return HubStreamer(hub, channel=channel, message_id="m-1", thread_id=channel, flush_chars=1)


async def subscribe(
    nchan: NchanHub, how: str, channel: str, count: int, last_event_id: str | None = None
) -> list[tuple[str, str]]:
    if how == "websocket":
        return await ws_subscribe(
            f"{nchan.subscribe_url}/{channel}", count, last_event_id=last_event_id
        )
    return await sse_subscribe(
        f"{nchan.eventsource_url}/{channel}", count, last_event_id=last_event_id
    )


@pytest.mark.parametrize("how", ["websocket", "eventsource"])
@pytest.mark.parametrize("kind", PUBLISHERS)
async def test_subscriber_that_resumes_gets_every_later_payload_once_in_order(
    nchan: NchanHub, kind: str, how: str
) -> None:
    hub = publisher(nchan, kind)
    await hub.start()
    channel = fresh_channel()
    streamer = answer_streamer(hub, channel)
    streamer.start()
    piece = "token " * 10  # 60 characters: the answer passes 1,000 and 2,000 (snapshots)
    for _ in range(20):
        await streamer.on_text_delta(piece)
    assert await hub.drain(channel, timeout=5)
    # A browser reads what is there (started, responding, 20 deltas), then drops.
    first = await subscribe(nchan, how, channel, 22)
    for _ in range(30):
        await streamer.on_text_delta(piece)
    await streamer.on_completed(RunResult("r", piece * 50, None))
    assert await streamer.delivered(5)
    # It comes back with the id of the last message it got: the 31 later payloads, once.
    rest = await subscribe(nchan, how, channel, 31, last_event_id=first[-1][0])
    payloads = [json.loads(data) for _, data in first + rest]
    assert check_payload_sequence(payloads, "compact") == piece * 50
    assert len({event_id for event_id, _ in first + rest}) == 53
    # One that arrives after the answer ended reads it from the start.
    late = [json.loads(data) for _, data in await subscribe(nchan, how, channel, 53)]
    assert late == payloads and answer_of(late) == piece * 50
    await hub.close()


@pytest.mark.parametrize("kind", PUBLISHERS)
async def test_each_payload_is_the_bare_object_sent_with_the_token(
    nchan: NchanHub, kind: str
) -> None:
    hub = publisher(nchan, kind)
    await hub.start()
    channel = fresh_channel()
    streamer = answer_streamer(hub, channel)
    streamer.start()
    await streamer.on_completed(RunResult("r", "", None))
    assert await streamer.delivered(5)
    (_, data), (_, final) = await subscribe(nchan, "websocket", channel, 2)
    assert json.loads(data)["status"] == "started" and "channel" not in json.loads(data)
    assert json.loads(final)["final_message"] is True
    await hub.close()


@pytest.mark.parametrize("kind", PUBLISHERS)
async def test_refused_token_drops_the_payloads_at_once_with_a_clear_log_line(
    nchan: NchanHub, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "service.hub")
    hub = publisher(nchan, kind, token="not-the-token")
    await hub.start()
    channel = fresh_channel()
    streamer = answer_streamer(hub, channel)
    streamer.start()
    await streamer.on_text_delta("hello")
    await streamer.on_completed(RunResult("r", "hello", None))
    assert await streamer.delivered(5) is False
    assert "refused the publisher (HTTP 403)" in caplog.text
    assert "WEBSOCKET_TOKEN" in caplog.text and "not-the-token" not in caplog.text
    assert hub.tracked_channels == 0
    await hub.close()


@pytest.mark.parametrize("kind", PUBLISHERS)
async def test_nginx_restarted_mid_answer_the_publisher_reconnects_and_delivers_the_rest(
    kind: str,
) -> None:
    with NchanHub.start(token=TOKEN) as own:
        hub = publisher(own, kind)
        await hub.start()
        channel = fresh_channel()
        streamer = answer_streamer(hub, channel)
        streamer.start()
        await streamer.on_text_delta("before ")
        assert await hub.drain(channel, timeout=5)
        own.restart()  # nchan's memory store starts empty: the channel is gone
        for _ in range(5):
            await streamer.on_text_delta("after ")
        await streamer.on_completed(RunResult("r", "before " + "after " * 5, None))
        delivered = await streamer.delivered(10)
        got = [json.loads(d) for _, d in await subscribe(own, "eventsource", channel, 6)]
        # Everything sent after the restart is there once, in order, ending with the final.
        assert [p["seq"] for p in got] == list(range(3, 9))
        assert got[-1]["final_message"] is True
        assert got[-1]["message"] == "before " + "after " * 5
        # Unacknowledged (ws) or unanswered (http) messages were published again.
        assert delivered
        await hub.close()


def test_channel_names_nchan_could_misroute_are_invalid_requests_by_section_4() -> None:
    conf = (DEPLOY / "nchan.conf").read_text()
    routes = re.findall(r'location ~ "\^/(?:pub|sub)/\((.+?)\)\$"', conf)
    assert routes == [CHANNEL_PATTERN.removeprefix("^").removesuffix("$")] * 2
    for bad in ["a/b", "../sub/x", "a?b", "a b", "a#b", "%2F", "ü", "x" * 201, ""]:
        with pytest.raises(ValidationError):
            ChatRequest.model_validate({"message": "hi", "channel": bad})


def test_every_valid_channel_name_publishes_and_subscribes(nchan: NchanHub) -> None:
    name = "Az09_.:-" + "x" * 192  # every allowed character class, 200 characters
    ChatRequest.model_validate({"message": "hi", "channel": name})
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    posted = httpx2.post(f"{nchan.http_publish_url}/{name}", content=b"{}", headers=headers)
    assert posted.status_code in (201, 202)


# -- the service, end to end ----------------------------------------------------------------


@pytest.fixture(scope="module")
async def nchan_stack(fakes: Fakes, log_dir: Path, nchan: NchanHub) -> AsyncIterator[Stack]:
    env = {
        "HUB_PROTOCOL": "nchan",
        "HUB_PAYLOAD_MODE": "compact",
        "WEBSOCKET_URI": nchan.publish_url,
        "WEBSOCKET_TOKEN": TOKEN,
        "HUB_PUBLIC_URL": nchan.subscribe_url,
    }
    async with start_stack(fakes, log_dir, "responses", **env) as stack:
        yield stack


async def test_service_streams_a_long_compact_answer_that_a_browser_reads_from_nchan(
    nchan_stack: Stack, nchan: NchanHub
) -> None:
    tag = uuid.uuid4().hex[:8]
    words = [f"w{i} " for i in range(600)]
    nchan_stack.fakes.openai.script(tag, [[Text(*words)]])
    body = nchan_stack.request(f"long answer {tag}", message_id=f"m-{tag}")
    await nchan_stack.broker.publish(body)
    event = await nchan_stack.broker.wait_event(f"m-{tag}", timeout=30)
    assert event["event"] == "completed" and event["hub_delivered"] is True
    payloads: list[dict[str, Any]] = []
    url = f"{nchan.eventsource_url}/{body['channel']}"
    while not payloads or not payloads[-1]["final_message"]:
        got = await sse_subscribe(url, len(payloads) + 1)
        payloads = [json.loads(data) for _, data in got]
    assert check_payload_sequence(payloads, "compact") == "".join(words) == event["text"]
    assert any(p.get("snapshot") for p in payloads)


async def test_service_with_a_refused_token_completes_with_hub_delivered_false(
    fakes: Fakes, log_dir: Path, nchan: NchanHub
) -> None:
    env = {
        "HUB_PROTOCOL": "nchan",
        "WEBSOCKET_URI": nchan.http_publish_url,
        "WEBSOCKET_TOKEN": "wrong-token",
    }
    async with start_stack(fakes, log_dir, "responses", **env) as stack:
        tag = uuid.uuid4().hex[:8]
        stack.fakes.openai.script(tag, [[Text("still ", "answered")]])
        body = stack.request(f"refused {tag}", message_id=f"m-{tag}")
        await stack.broker.publish(body)
        event = await stack.broker.wait_event(f"m-{tag}", timeout=30)
        assert event["event"] == "completed" and event["text"] == "still answered"
        assert event["hub_delivered"] is False
        assert event["hub_error"] == "websocket_unavailable"
        assert "refused the publisher (HTTP 403)" in stack.service.log_text()


async def test_service_survives_nginx_restarting_mid_answer_with_one_final_event(
    nchan_stack: Stack, nchan: NchanHub
) -> None:
    tag = uuid.uuid4().hex[:8]
    words = [f"r{i} " for i in range(60)]
    nchan_stack.fakes.openai.script(tag, [[Text(*words, interval=0.05)]])
    body = nchan_stack.request(f"restart {tag}", message_id=f"m-{tag}")
    url = f"{nchan.eventsource_url}/{body['channel']}"
    await nchan_stack.broker.publish(body)
    before = await sse_subscribe(url, 5, timeout=20)  # the answer is streaming
    await asyncio.to_thread(nchan.restart)
    event = await nchan_stack.broker.wait_event(f"m-{tag}", timeout=30)
    assert event["event"] == "completed" and event["text"] == "".join(words)
    assert nchan_stack.broker.events_for(f"m-{tag}") == [event]
    # The restarted hub has what was published after it came back: in seq order, once, up
    # to the final payload with the whole answer.
    after: list[dict[str, Any]] = []
    while not after or not after[-1]["final_message"]:
        after = [json.loads(d) for _, d in await sse_subscribe(url, len(after) + 1)]
    seqs = [p["seq"] for p in after]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert after[-1]["message"] == event["text"]
    assert json.loads(before[-1][1])["seq"] < seqs[-1]
    # Delivered after the reconnect, or said so (§9).
    expected_error = None if event["hub_delivered"] else "websocket_unavailable"
    assert event["hub_error"] == expected_error


async def test_the_shipped_config_keeps_the_last_10000_messages_of_a_channel(
    nchan: NchanHub,
) -> None:
    hub = publisher(nchan, "ws")
    await hub.start()
    channel = fresh_channel()
    hub.subscribe(channel)
    for seq in range(10_050):
        hub.send(channel, {"seq": seq})
    hub.unsubscribe(channel)
    assert await hub.drain(channel, timeout=30)
    # No id: the oldest message kept. The 50 oldest went; the last 10,000 are all there.
    got = await subscribe(nchan, "websocket", channel, 10_000, last_event_id=None)
    assert [json.loads(data)["seq"] for _, data in got] == list(range(50, 10_050))
    await hub.close()
