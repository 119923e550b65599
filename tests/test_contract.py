"""The contract, end to end: the real service, the real RabbitMQ, the real SDK, fake upstreams.

Every test runs on both backends (the `stack` fixture is parametrised by backend).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from service.schemas import HubPayload
from tests.conftest import Stack
from tests.fakes.script import HttpError, Stall, Text, ToolCall
from tests.harness import SECRET_KEY

pytestmark = pytest.mark.asyncio(loop_scope="session")


def token() -> str:
    return uuid.uuid4().hex[:12]


def assert_payload_contract(payloads: list[dict[str, Any]], message_id: str) -> None:
    """§5: schema, seq without gaps, order, one final, deltas add up to the final message."""
    for payload in payloads:
        HubPayload.model_validate(payload)
        assert payload["message_id"] == message_id
    assert [p["seq"] for p in payloads] == list(range(len(payloads)))
    assert payloads[0]["status"] == "started"
    finals = [p for p in payloads if p["final_message"]]
    assert finals == [payloads[-1]]
    final = payloads[-1]
    texts = [p for p in payloads if p["type"] == "response"]
    responding = [i for i, p in enumerate(payloads) if p["status"] == "responding"]
    if final["status"] == "completed":
        assert final["type"] == "response"
        assert "".join(p["delta"] for p in texts) == final["message"]
        if final["message"]:
            assert len(responding) == 1
            first_text = next(i for i, p in enumerate(payloads) if p["type"] == "response")
            assert responding[0] < first_text
        for p in texts:
            assert final["message"].startswith(p["message"])
    else:
        assert final["type"] in ("error", "timeout")
        assert final["error_details"]
        assert final["error"]["code"]
    assert len(responding) <= 1


async def test_text_request_streams_in_contract_order_and_completes_once(stack: Stack) -> None:
    tag = token()
    stack.fakes.openai.script(tag, [[Text("Hello", " there,", " friend", interval=0.01)]])
    body = stack.request(f"say hello {tag}", message_id=f"m-{tag}", metadata={"user": "u1"})
    await stack.broker.publish(body, reply_to=stack.broker.reply_queue, correlation_id=f"c-{tag}")

    payloads = await stack.fakes.hub_final(body["channel"])
    assert_payload_contract(payloads, f"m-{tag}")
    assert payloads[-1]["message"] == "Hello there, friend"
    assert all(p["thread_id"] == body["channel"] for p in payloads)

    event = await stack.broker.wait_event(f"m-{tag}")
    assert event["event"] == "completed"
    assert event["_routing_key"] == f"{stack.names.routing_key}.completed"
    assert event["_delivery_mode"] == 2
    assert event["text"] == "Hello there, friend"
    assert event["channel"] == event["thread_id"] == body["channel"]
    assert event["run_id"]
    assert event["usage"]["output_tokens"] > 0
    assert event["finished_at"] >= event["started_at"]
    await stack.broker.wait_until(lambda: stack.broker.replies, what="reply")
    correlation, reply = stack.broker.replies[-1]
    assert correlation == f"c-{tag}"
    assert reply["text"] == event["text"]
    assert len(stack.broker.events_for(f"m-{tag}")) == 1

    frames = [f for f in stack.fakes.hub.frames if f.channel == "subscription"]
    actions = [f.payload["action"] for f in frames if f.payload.get("channel") == body["channel"]]
    assert actions[0] == "subscribe" and actions[-1] == "unsubscribe"


async def test_tool_call_is_shown_on_the_hub_and_recorded_in_the_event(stack: Stack) -> None:
    tag = token()
    stack.fakes.openai.script(
        tag,
        [
            [ToolCall("get_weather", json.dumps({"city": "Makati", "country_code": "PH"}))],
            [Text("It is warm", " in Makati.")],
        ],
    )
    body = stack.request(f"weather please {tag}", message_id=f"m-{tag}")
    await stack.broker.publish(body)

    payloads = await stack.fakes.hub_final(body["channel"])
    assert_payload_contract(payloads, f"m-{tag}")
    tools = [p for p in payloads if p["type"] == "tool"]
    assert len(tools) == 2
    assert {p["tool"]["name"] for p in tools} == {"get_weather"}
    assert tools[0]["status"] == "processing"
    first_text = next(i for i, p in enumerate(payloads) if p["type"] == "response")
    assert payloads.index(tools[-1]) < first_text

    event = await stack.broker.wait_event(f"m-{tag}")
    assert event["text"] == "It is warm in Makati."
    [call] = event["tool_calls"]
    assert call["name"] == "get_weather" and call["ok"] is True
    outputs = stack.tool_outputs(body["channel"])
    assert outputs and "temperature" in outputs[0]


async def test_failing_tool_returns_an_error_to_the_model_and_the_run_goes_on(
    stack: Stack,
) -> None:
    tag = token()
    stack.fakes.openai.script(
        tag,
        [
            [ToolCall("get_available_offices", json.dumps({"city": "Makati&x=1", "capacity": 0}))],
            [Text("Sorry, I could not look that up.")],
        ],
    )
    body = stack.request(f"offices {tag}", message_id=f"m-{tag}")
    await stack.broker.publish(body)
    event = await stack.broker.wait_event(f"m-{tag}")
    assert event["event"] == "completed"
    assert event["tool_calls"][0]["ok"] is False
    outputs = stack.tool_outputs(body["channel"])
    assert "error" in json.loads(outputs[0])
    assert not [r for r in stack.fakes.apis.requests if "Makati&x=1" in str(r)]


async def test_unknown_thread_gives_thread_not_found(stack: Stack) -> None:
    tag = token()
    body = stack.request(f"hi {tag}", channel=stack.missing_thread(), message_id=f"m-{tag}")
    await stack.broker.publish(body)
    payloads = await stack.fakes.hub_final(body["channel"])
    assert_payload_contract(payloads, f"m-{tag}")
    assert payloads[-1]["error"] == {"code": "thread_not_found", "retryable": False}
    event = await stack.broker.wait_event(f"m-{tag}")
    assert event["event"] == "failed"
    assert event["code"] == "thread_not_found"
    assert event["_routing_key"] == f"{stack.names.routing_key}.failed"


async def test_thread_id_overrides_channel_as_the_conversation(stack: Stack) -> None:
    tag = token()
    thread = stack.new_thread()
    body = stack.request(f"echo {tag}", thread_id=thread, message_id=f"m-{tag}")
    await stack.broker.publish(body)
    payloads = await stack.fakes.hub_final(body["channel"])
    assert {p["thread_id"] for p in payloads} == {thread}
    event = await stack.broker.wait_event(f"m-{tag}")
    assert event["thread_id"] == thread and event["channel"] == body["channel"]


async def test_message_id_defaults_to_the_amqp_message_id(stack: Stack) -> None:
    tag = token()
    body = stack.request(f"echo {tag}")
    await stack.broker.publish(body, message_id=f"amqp-{tag}")
    event = await stack.broker.wait_event(f"amqp-{tag}")
    assert event["event"] == "completed"


async def test_transient_upstream_error_before_text_is_retried(stack: Stack) -> None:
    tag = token()
    stack.fakes.openai.script(tag, [[HttpError(500)], [Text("recovered")]])
    body = stack.request(f"retry me {tag}", message_id=f"m-{tag}")
    await stack.broker.publish(body)
    event = await stack.broker.wait_event(f"m-{tag}")
    assert event["event"] == "completed" and event["text"] == "recovered"


async def test_persistent_rate_limit_ends_with_rate_limited_retryable(stack: Stack) -> None:
    tag = token()
    stack.fakes.openai.script(tag, [[HttpError(429)], [HttpError(429)], [HttpError(429)]])
    body = stack.request(f"busy {tag}", message_id=f"m-{tag}")
    await stack.broker.publish(body)
    event = await stack.broker.wait_event(f"m-{tag}")
    assert event["event"] == "failed"
    assert event["code"] == "rate_limited" and event["retryable"] is True
    payloads = await stack.fakes.hub_final(body["channel"])
    assert payloads[-1]["error"] == {"code": "rate_limited", "retryable": True}


async def test_silent_stream_ends_with_timeout(stack: Stack) -> None:
    tag = token()
    stack.fakes.openai.script(tag, [[Text("partial"), Stall(30)], [Text("never")], [Text("never")]])
    body = stack.request(f"stall {tag}", message_id=f"m-{tag}")
    await stack.broker.publish(body)
    payloads = await stack.fakes.hub_final(body["channel"], timeout=30)
    assert_payload_contract(payloads, f"m-{tag}")
    assert payloads[-1]["type"] == "timeout"
    assert payloads[-1]["error"]["code"] == "timeout"
    event = await stack.broker.wait_event(f"m-{tag}", timeout=30)
    assert event["code"] == "timeout"
    # Text had been streamed: no restart, so "partial" appears once.
    assert sum(p.get("delta", "").count("partial") for p in payloads) == 1


async def test_requests_on_one_conversation_run_in_order(stack: Stack) -> None:
    tag = token()
    channel = stack.new_thread()
    stack.fakes.openai.script(f"first {tag}", [[Text("one", " two", interval=0.05)]])
    stack.fakes.openai.script(f"second {tag}", [[Text("three")]])
    await stack.broker.publish(stack.request(f"first {tag}", channel, message_id=f"a-{tag}"))
    await stack.broker.publish(stack.request(f"second {tag}", channel, message_id=f"b-{tag}"))
    await stack.broker.wait_event(f"b-{tag}")
    first = await stack.broker.wait_event(f"a-{tag}")
    second = stack.broker.events_for(f"b-{tag}")[0]
    assert first["event"] == second["event"] == "completed"
    assert first["finished_at"] <= second["started_at"]
    payloads = stack.fakes.hub.payloads(channel)
    ids = [p["message_id"] for p in payloads]
    assert ids == sorted(ids, key=lambda i: i.startswith("b-"))  # no interleaving


async def test_the_api_key_never_appears_in_logs_events_or_payloads(stack: Stack) -> None:
    tag = token()
    stack.fakes.openai.script(tag, [[HttpError(401, message=f"Incorrect API key {SECRET_KEY}")]])
    body = stack.request(f"leak {tag}", message_id=f"m-{tag}")
    await stack.broker.publish(body)
    await stack.broker.wait_event(f"m-{tag}")
    assert SECRET_KEY not in stack.service.log_text()
    assert "hub-token-SECRET-77" not in stack.service.log_text()
    assert SECRET_KEY not in json.dumps(stack.broker.events)
    assert SECRET_KEY not in json.dumps(stack.fakes.hub.payloads(body["channel"]))
    assert "ow-test-key" not in stack.service.log_text()
    # The key did reach the API, and the token the hub.
    assert any(
        r.headers.get("authorization") == f"Bearer {SECRET_KEY}"
        for r in stack.fakes.openai.requests
    )
    assert "Bearer hub-token-SECRET-77" in stack.fakes.hub.auth_headers
