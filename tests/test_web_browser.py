"""The web chat in a real browser (contract §10): Debian's Chromium, headless, through
Playwright, against the real service, RabbitMQ and the fakes. Everything is read through the
page's `data-testid`s, as a black-box check would.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from playwright.async_api import Browser, Page, expect
from websockets.asyncio.client import connect

from tests.conftest import Fakes
from tests.fakes.script import HttpError, Text, ToolCall
from tests.web_support import WEB_TOKEN, WebService, browser, guarded_web, nchan_web, web

__all__ = ["browser", "guarded_web", "nchan_web", "web"]  # fixtures

NARROW = {"width": 390, "height": 760}

# Records every value `status` and `answer` take, so a test can tell that it streamed.
RECORDER = """
window.__seen = {status: [], answer: []};
document.addEventListener("DOMContentLoaded", () => {
  const watch = (testid, into) => {
    const element = document.querySelector(`[data-testid="${testid}"]`);
    const record = () => {
      const text = element.textContent;
      if (into[into.length - 1] !== text) into.push(text);
    };
    record();
    new MutationObserver(record).observe(element,
      {childList: true, characterData: true, subtree: true});
  };
  watch("status", window.__seen.status);
  watch("answer", window.__seen.answer);
});
"""


async def open_chat(browser: Browser, url: str) -> Page:
    context = await browser.new_context(viewport=NARROW)
    await context.add_init_script(RECORDER)
    page = await context.new_page()
    await page.goto(f"{url}/chat")
    return page


async def conversation(page: Page) -> str:
    await expect(page.locator("#conversation")).to_have_text(_conversation_id())
    return str(await page.locator("#conversation").text_content())


def _conversation_id() -> re.Pattern[str]:
    return re.compile(r"^conv_\w+$")


async def ask(page: Page, text: str) -> None:
    box = page.get_by_test_id("message-input")
    await box.fill(text)
    await box.press("Enter")


async def final_event(web: WebService, channel: str, timeout: float = 20) -> dict[str, Any]:
    broker = web.stack.broker
    found = await broker.wait_until(
        lambda: [e for e in broker.events if e.get("channel") == channel], timeout, channel
    )
    return dict(found[0])


async def test_page_streams_an_answer_after_a_tool_call(
    web: WebService, browser: Browser, fakes: Fakes
) -> None:
    word = uuid.uuid4().hex
    chunks = [f"part{i} " for i in range(12)]
    fakes.openai.script(
        word,
        [[ToolCall("get_weather", '{"city": "Makati"}')], [Text(*chunks, interval=0.08)]],
    )
    page = await open_chat(browser, web.base_url)
    channel = await conversation(page)
    await expect(page.get_by_test_id("status")).to_have_text("idle")
    await ask(page, f"What's the weather? {word}")

    await expect(page.get_by_test_id("status")).to_have_text("streaming")
    await expect(page.get_by_test_id("status")).to_have_text("done", timeout=15_000)
    event = await final_event(web, channel)
    assert event["event"] == "completed"
    assert event["text"] == "".join(chunks)
    await expect(page.get_by_test_id("answer")).to_have_text(event["text"])
    await expect(page.get_by_role("list", name="Tool calls")).to_contain_text("Calling get_weather")

    seen = await page.evaluate("window.__seen")
    statuses = [s for s in seen["status"] if s != "idle"]
    assert statuses == ["streaming", "done"]
    partial = [a for a in seen["answer"] if a]
    assert len(partial) >= 3, partial  # it grew piece by piece, not all at once
    assert all(event["text"].startswith(a) for a in partial)
    assert partial[-1] == event["text"]
    # Accessible and narrow: a live region, and nothing wider than the window.
    assert await page.get_by_test_id("answer").get_attribute("aria-live") == "polite"
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await page.context.close()


async def test_page_shows_an_error_answer_plainly(
    web: WebService, browser: Browser, fakes: Fakes
) -> None:
    word = uuid.uuid4().hex
    fakes.openai.script(word, [[HttpError(400, message="The model refused this request")]])
    page = await open_chat(browser, web.base_url)
    channel = await conversation(page)
    await ask(page, f"fail please {word}")

    await expect(page.get_by_test_id("status")).to_have_text("error", timeout=15_000)
    event = await final_event(web, channel)
    assert event["event"] == "failed"
    alert = page.get_by_role("alert")
    await expect(alert).to_be_visible()
    await expect(alert).to_have_text(event["message"])
    await page.context.close()


async def test_stop_ends_cancelled_with_a_cancelled_failed_event(
    web: WebService, browser: Browser, fakes: Fakes
) -> None:
    word = uuid.uuid4().hex
    fakes.openai.script(word, [[Text(*(["going on "] * 200), interval=0.05)]])
    page = await open_chat(browser, web.base_url)
    channel = await conversation(page)
    await ask(page, f"talk for a long time {word}")
    await expect(page.get_by_test_id("answer")).to_contain_text("going on")
    await expect(page.get_by_test_id("stop")).to_be_enabled()
    await page.keyboard.press("Escape")  # the Stop button's key

    await expect(page.get_by_test_id("status")).to_have_text("cancelled", timeout=5_000)
    event = await final_event(web, channel)
    assert event["event"] == "failed"
    assert event["code"] == "cancelled" and event["retryable"] is False
    await expect(page.get_by_test_id("answer")).to_have_text(event["text"])
    await page.context.close()


async def test_page_reads_compact_payloads_and_puts_them_in_seq_order(
    web: WebService, browser: Browser, fakes: Fakes
) -> None:
    # The payloads come from the test through the development hub, which passes them on to
    # the page like the service's own (contract §9, compact mode).
    page = await open_chat(browser, web.base_url)
    channel = await conversation(page)
    message_id = f"m-{uuid.uuid4().hex}"

    def payload(seq: int, kind: str, status: str, message: str = "", **more: Any) -> str:
        body = {
            "type": kind,
            "status": status,
            "message": message,
            "final_message": False,
            "timestamp": 0.0,
            "seq": seq,
            "message_id": message_id,
            "thread_id": channel,
            **more,
        }
        return json.dumps({"channel": channel, "payload": body})

    answer, status = page.get_by_test_id("answer"), page.get_by_test_id("status")
    # The page subscribes once it knows the conversation: wait for that before sending.
    subscribed = fakes.hub.wait_for(
        lambda: fakes.hub.subscriber_count(channel) >= 1, what="the page's subscription"
    )
    await fakes.on_loop(subscribed)
    async with connect(fakes.hub.uri) as hub:
        await hub.send(payload(0, "status", "started", "Request received"))
        await hub.send(payload(1, "status", "responding", "Responding"))
        await hub.send(payload(2, "response", "in_progress", delta="Hel"))
        await hub.send(payload(3, "response", "in_progress", delta="lo"))
        await expect(answer).to_have_text("Hello")
        await expect(status).to_have_text("streaming")
        # seq 5 before seq 4: held back until 4 arrives (else 'Hello there, world')
        await hub.send(payload(5, "response", "in_progress", delta=" there"))
        await hub.send(payload(4, "response", "in_progress", delta=", world"))
        await expect(answer).to_have_text("Hello, world there")
        # A snapshot replaces whatever was there
        await hub.send(
            payload(6, "response", "in_progress", "Hello, world there!", delta="!", snapshot=True)
        )
        await expect(answer).to_have_text("Hello, world there!")
        await hub.send(payload(7, "tool", "processing", "Calling get_weather"))
        await hub.send(payload(8, "response", "in_progress", delta=" Sunny."))
        await expect(answer).to_have_text("Hello, world there! Sunny.")
        final = "Hello, world there! Sunny."
        await hub.send(payload(9, "response", "completed", final, delta="", final_message=True))
        await expect(status).to_have_text("done")
    await expect(answer).to_have_text(final)
    await expect(page.get_by_role("list", name="Tool calls")).to_have_text("Calling get_weather")
    await page.context.close()


async def test_token_prompt_when_the_service_is_off_loopback(
    guarded_web: WebService, browser: Browser
) -> None:
    page = await open_chat(browser, guarded_web.base_url)
    token_input = page.get_by_test_id("token-input")
    await expect(token_input).to_be_visible()
    # A wrong token is refused, and the page asks again.
    await token_input.fill("not-the-token")
    await page.get_by_test_id("token-submit").click()
    await expect(token_input).to_be_visible()
    await expect(token_input).to_have_value("")
    await token_input.fill(WEB_TOKEN)
    await page.get_by_test_id("token-submit").click()
    await expect(token_input).to_be_hidden()
    channel = await conversation(page)

    word = uuid.uuid4().hex
    await ask(page, f"hello {word}")
    await expect(page.get_by_test_id("status")).to_have_text("done", timeout=15_000)
    event = await final_event(guarded_web, channel)
    await expect(page.get_by_test_id("answer")).to_have_text(event["text"])

    # Asked once: a reload keeps the token (this tab) and the conversation.
    await page.reload()
    assert await conversation(page) == channel
    await expect(token_input).to_be_hidden()
    # "New conversation" starts another one.
    await page.get_by_role("button", name="New conversation").click()
    await expect(page.locator("#conversation")).not_to_have_text(channel)
    await expect(page.get_by_test_id("status")).to_have_text("idle")
    await expect(page.get_by_test_id("answer")).to_have_text("")
    await page.context.close()


async def test_reload_mid_answer_with_nchan_shows_the_whole_answer_and_goes_on(
    nchan_web: WebService, browser: Browser, fakes: Fakes
) -> None:
    word = uuid.uuid4().hex
    # Over 1,000 characters: the compact payloads include snapshots (contract §9).
    chunks = [f"chunk {i:02d} of a long answer. " for i in range(60)]
    fakes.openai.script(word, [[Text(*chunks, interval=0.03)]])
    page = await open_chat(browser, nchan_web.base_url)
    channel = await conversation(page)
    await ask(page, f"a long answer please {word}")
    await expect(page.get_by_test_id("answer")).to_contain_text("chunk 03")
    assert not [e for e in nchan_web.stack.broker.events if e.get("channel") == channel]

    await page.reload()  # mid-answer: the recorder starts afresh with the new document
    assert await conversation(page) == channel
    await expect(page.get_by_test_id("status")).to_have_text("done", timeout=15_000)
    event = await final_event(nchan_web, channel)
    assert event["text"] == "".join(chunks)
    await expect(page.get_by_test_id("answer")).to_have_text(event["text"])
    seen = await page.evaluate("window.__seen")
    shown = [a for a in seen["answer"] if a]
    # From the start of the answer at once (not only what came after the reload), then on.
    assert shown[0].startswith("chunk 00") and len(shown) >= 2, shown[:3]
    assert all(event["text"].startswith(a) for a in shown)
    assert "streaming" in seen["status"]

    await page.reload()  # after the end: the whole answer, done
    await expect(page.get_by_test_id("status")).to_have_text("done")
    await expect(page.get_by_test_id("answer")).to_have_text(event["text"])
    await page.context.close()
