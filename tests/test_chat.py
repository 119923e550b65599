"""`python -m service chat`: a subprocess driven through stdin, against the real service."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Fakes, Stack, start_stack
from tests.fakes.script import Text, ToolCall
from tests.harness import ROOT, Broker, ServiceNames, service_env

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", params=["responses", "assistants"])
async def chat_stack(
    request: pytest.FixtureRequest, fakes: Fakes, log_dir: Path
) -> AsyncIterator[Stack]:
    async with start_stack(fakes, log_dir, request.param) as stack:
        yield stack


async def chat(env: dict[str, str], stdin: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "chat",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(stdin.encode()), 40)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_chat_streams_the_answer_with_tool_status_lines_usage_and_timing(
    chat_stack: Stack, fakes: Fakes
) -> None:
    t = uuid.uuid4().hex[:8]
    fakes.openai.script(
        f"chat-weather {t}",
        [[ToolCall("get_weather", json.dumps({"city": "Makati"}))], [Text("Sunny ", "and warm.")]],
    )
    question = f"How is the weather? chat-weather {t}"
    code, out = await chat(chat_stack.service.env, f"{question}\n\nSay hi {t}\n/quit\n")
    assert code == 0, out
    prefix = "conv_" if chat_stack.backend == "responses" else "thread_"
    assert f"new conversation {prefix}" in out
    lines = out.splitlines()
    start = lines.index(f"you> {question}")
    assert lines[start + 1 : start + 4] == [
        "  · Calling get_weather",
        lines[start + 2],
        "assistant> Sunny and warm.",
    ]
    assert lines[start + 2].startswith("  · get_weather returned in ")
    summary = lines[start + 4]
    assert summary.startswith("  (done in ") and "first text after" in summary
    assert "tokens " in summary and "tools: get_weather" in summary
    assert f"assistant> Echo: Say hi {t}" in out  # the fake echoes unscripted messages
    assert out.count("  (done in ") == 2


async def test_chat_reuses_a_given_thread_and_shows_a_failure(
    chat_stack: Stack, fakes: Fakes
) -> None:
    thread = chat_stack.new_thread()
    code, out = await chat(chat_stack.service.env, "hello again\n", "--thread", thread)
    assert code == 0, out
    assert "new conversation" not in out and f"conversation {thread}" in out
    assert "assistant> Echo: hello again" in out
    assert next(p["message_id"] for p in fakes.hub.payloads(thread)).startswith("chat-")

    missing = chat_stack.missing_thread()
    code, out = await chat(chat_stack.service.env, "anyone?\n", "--thread", missing)
    assert code == 0, out
    assert "  ! thread_not_found: " in out
    assert "  (failed: thread_not_found: " in out


async def test_chat_says_when_the_service_is_not_there(fakes: Fakes) -> None:
    names = ServiceNames.fresh("nochat")
    env = service_env(names, fakes.urls())
    broker = await Broker.open(names)
    try:
        code, out = await chat(env, "hello?\n", "--thread", "conv_nobody")
    finally:
        await broker.cleanup()  # the chat declared the events exchange to listen on it
    assert code == 1
    assert "does not exist: is the service running" in out
