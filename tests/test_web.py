"""The web chat's HTTP side (contract §10): the page and its files, POST /v1/requests and
POST /v1/cancel publishing what upstream would, 422s that publish nothing, the token off
loopback, and the refusal to start without one. The browser tests are in test_web_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import aio_pika
import httpx2
import pytest

from service.app import create_app
from service.config import ConfigurationError, Settings
from service.web import check_web_chat, is_loopback
from service.web.routes import hub_public_url
from tests.conftest import Fakes
from tests.harness import (
    RABBITMQ_URL,
    ROOT,
    ServiceNames,
    close_service_connections,
    service_env,
)
from tests.web_support import (
    WEB_TOKEN,
    RequestTap,
    WebService,
    guarded_web,
    outside_address,
    web,
)

__all__ = ["guarded_web", "web"]  # fixtures

# ----- settings level: no network -----


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.2", False),
        ("10.0.0.1", False),
        ("example.org", False),
        ("localhost.example.org", False),
    ],
)
def test_loopback_means_127_0_0_0_8_or_ipv6_1_or_localhost(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_web_chat_off_loopback_without_token_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="WEB_CHAT_TOKEN"):
        check_web_chat(Settings(web_chat=True, http_host="0.0.0.0"))
    check_web_chat(Settings(web_chat=True, http_host="0.0.0.0", web_chat_token="s3cret-token"))
    check_web_chat(Settings(web_chat=True, http_host="127.0.0.1"))
    check_web_chat(Settings(web_chat=False, http_host="0.0.0.0"))


def test_page_finds_the_hub_at_hub_public_url_else_websocket_uri() -> None:
    assert hub_public_url(Settings(websocket_uri="ws://u:pw@hub:4000")) == "ws://hub:4000"
    assert (
        hub_public_url(Settings(websocket_uri="ws://hub:4000", hub_public_url="wss://x.example/ws"))
        == "wss://x.example/ws"
    )
    nchan = Settings(hub_protocol="nchan", websocket_uri="http://127.0.0.1:8090/pub")
    assert hub_public_url(nchan) == "ws://127.0.0.1:8090/sub"


def test_web_routes_are_mounted_only_with_web_chat_true() -> None:
    def paths(settings: Settings) -> set[str]:
        return {path for path, _ in create_app(settings).routes}

    assert not {"/chat", "/v1/requests", "/v1/cancel"} & paths(Settings())
    assert {"/chat", "/v1/requests", "/v1/cancel"} <= paths(Settings(web_chat=True))


async def test_service_refuses_to_start_web_chat_off_loopback_without_token() -> None:
    names = ServiceNames.fresh("webno")
    host, _ = outside_address()
    env = service_env(names, {}, WEB_CHAT="true", HTTP_HOST=host, HTTP_PORT="0")
    env.pop("WEB_CHAT_TOKEN", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "faststream", "run", "service.app:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert took < 30
    assert any("ERROR" in line and "WEB_CHAT_TOKEN" in line for line in output.splitlines())
    # Checked before connecting: the refused service declared nothing on the broker.
    connection = await aio_pika.connect_robust(RABBITMQ_URL)
    try:
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(names.queue, passive=True)
    finally:
        await connection.close()


# ----- the page -----


async def test_get_chat_serves_the_page_and_everything_it_loads(web: WebService) -> None:
    async with web.client() as client:
        page = await client.get("/chat")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        html = page.text
        for testid in ("message-input", "send", "stop", "answer", "status"):
            assert f'data-testid="{testid}"' in html
        assert 'data-testid="token-input"' in html and 'data-testid="token-submit"' in html
        assert "http://" not in html and "https://" not in html  # no CDN: all from here
        script = await client.get("/chat/chat.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        style = await client.get("/chat/chat.css")
        assert style.status_code == 200 and "text/css" in style.headers["content-type"]
        config = (await client.get("/chat/config.json")).json()
        assert config == {
            "hub_url": web.stack.fakes.hub.uri,
            "hub_protocol": "envelope",
            "token_required": False,
        }


# ----- POST /v1/requests -----


async def test_request_without_message_id_is_published_persistent_with_one_set(
    web: WebService,
) -> None:
    channel = web.stack.new_thread()
    async with RequestTap.on(web.names) as tap, web.client() as client:
        response = await client.post(
            "/v1/requests", json={"message": "hello there", "channel": channel, "extra": 1}
        )
        assert response.status_code == 202
        accepted = response.json()
        assert accepted["channel"] == channel and accepted["message_id"]
        message = await tap.wait_for(lambda body: body.get("channel") == channel)
    body = json.loads(message.body)
    assert body == {
        "message": "hello there",
        "channel": channel,
        "extra": 1,
        "message_id": accepted["message_id"],
    }
    assert message.message_id == accepted["message_id"]
    assert message.routing_key == web.names.routing_key
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    # And the service answers it like any upstream request.
    event = await web.stack.broker.wait_event(accepted["message_id"])
    assert event["event"] == "completed" and event["channel"] == channel


async def test_request_keeps_the_message_id_it_was_given(web: WebService) -> None:
    channel, message_id = web.stack.new_thread(), f"m-{uuid.uuid4().hex}"
    async with RequestTap.on(web.names) as tap, web.client() as client:
        response = await client.post(
            "/v1/requests", json={"message": "hi", "channel": channel, "message_id": message_id}
        )
        assert response.status_code == 202
        assert response.json() == {"message_id": message_id, "channel": channel}
        message = await tap.wait_for(lambda body: body.get("channel") == channel)
    assert message.message_id == message_id
    assert json.loads(message.body)["message_id"] == message_id


INVALID_REQUESTS: list[tuple[bytes, str]] = [
    (b"not json", "json"),
    (b"[1, 2]", "body"),
    (b'{"channel": "c1"}', "message"),
    (b'{"message": "   ", "channel": "c1"}', "message"),
    (b'{"message": "hi", "channel": "bad channel!"}', "channel"),
    (b'{"message": "hi", "channel": "c1", "thread_id": ""}', "thread_id"),
    (b'{"message": "hi", "channel": "c1", "message_id": ""}', "message_id"),
    (b'{"message": "hi", "channel": "c1", "metadata": {"k": 1}}', "metadata"),
    (b'{"message": "hi", "channel": "c1", "on_busy": "sometimes"}', "on_busy"),
    (b'{"message": "a\\ud800", "channel": "c1"}', "json"),
    (json.dumps({"message": "x" * 32_001, "channel": "c1"}).encode(), "message"),
    (
        json.dumps(
            {"message": "hi", "channel": "c1", "metadata": {str(i): "v" for i in range(17)}}
        ).encode(),
        "metadata",
    ),
]


async def test_invalid_requests_get_422_with_the_reason_and_publish_nothing(
    web: WebService,
) -> None:
    sentinel = web.stack.new_thread()
    async with RequestTap.on(web.names) as tap, web.client() as client:
        for body, reason in INVALID_REQUESTS:
            response = await client.post(
                "/v1/requests", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 422, body
            detail = response.json()["detail"]
            assert detail.startswith("Invalid request") and reason in detail.lower(), detail
        # Published in order on one channel: once the sentinel is tapped, nothing else came.
        ok = await client.post("/v1/requests", json={"message": "sentinel", "channel": sentinel})
        assert ok.status_code == 202
        await tap.wait_for(lambda body: body.get("channel") == sentinel)
    assert [body["channel"] for body in tap.bodies()] == [sentinel]


async def test_request_waits_for_the_broker_connection_to_come_back(web: WebService) -> None:
    channel = web.stack.new_thread()
    async with RequestTap.on(web.names) as tap, web.client() as client:
        assert close_service_connections(web.names) >= 1  # as an outage would
        response = await client.post("/v1/requests", json={"message": "hi", "channel": channel})
        assert response.status_code == 202, response.text
        await tap.wait_for(lambda body: body.get("channel") == channel)
    event = await web.stack.broker.wait_event(response.json()["message_id"], timeout=30)
    assert event["event"] == "completed"


# ----- POST /v1/cancel -----


async def test_cancel_is_published_to_the_cancel_routing_key(web: WebService) -> None:
    message_id = f"m-{uuid.uuid4().hex}"
    async with RequestTap.on(web.names) as tap, web.client() as client:
        response = await client.post("/v1/cancel", json={"message_id": message_id})
        assert response.status_code == 202
        message = await tap.wait_for(lambda body: body.get("message_id") == message_id)
    assert message.routing_key == f"{web.names.routing_key}.cancel"
    assert json.loads(message.body) == {"message_id": message_id}
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


INVALID_CANCELS: list[Any] = [
    {},
    {"message_id": None, "channel": None},
    {"message_id": ""},
    {"message_id": 42},
    {"channel": "bad channel!"},
    {"message_id": "m-1", "channel": "bad channel!"},
    [1],
]


async def test_invalid_cancels_get_422_and_publish_nothing(web: WebService) -> None:
    sentinel = f"m-{uuid.uuid4().hex}"
    async with RequestTap.on(web.names) as tap, web.client() as client:
        for body in INVALID_CANCELS:
            response = await client.post("/v1/cancel", json=body)
            assert response.status_code == 422, body
            assert response.json()["detail"].startswith("Invalid cancel")
        bad_json = await client.post("/v1/cancel", content=b"{")
        assert bad_json.status_code == 422
        assert (await client.post("/v1/cancel", json={"message_id": sentinel})).status_code == 202
        await tap.wait_for(lambda body: body.get("message_id") == sentinel)
    assert tap.bodies() == [{"message_id": sentinel}]


# ----- the token off loopback -----


async def test_off_loopback_the_posts_need_the_bearer_token(guarded_web: WebService) -> None:
    channel = guarded_web.stack.new_thread()
    request = {"message": "hello", "channel": channel}
    async with RequestTap.on(guarded_web.names) as tap:
        async with guarded_web.client() as anonymous:
            assert (await anonymous.get("/chat")).status_code == 200  # the page asks for it
            config = (await anonymous.get("/chat/config.json")).json()
            assert config["token_required"] is True
            for path, body in (("/v1/requests", request), ("/v1/cancel", {"channel": channel})):
                refused = await anonymous.post(path, json=body)
                assert refused.status_code == 401
                assert "WEB_CHAT_TOKEN" in refused.json()["detail"]
        async with guarded_web.client("wrong-token") as wrong:
            assert (await wrong.post("/v1/requests", json=request)).status_code == 401
            assert (await wrong.post("/v1/conversations")).status_code == 401
        async with guarded_web.client(WEB_TOKEN) as allowed:
            accepted = await allowed.post("/v1/requests", json=request)
            assert accepted.status_code == 202
            await tap.wait_for(lambda body: body.get("channel") == channel)
    assert len(tap.messages) == 1
    event = await guarded_web.stack.broker.wait_event(accepted.json()["message_id"])
    assert event["event"] == "completed"


async def test_the_page_creates_conversations_through_the_service(
    web: WebService, fakes: Fakes
) -> None:
    async with web.client() as client:
        created = await client.post("/v1/conversations")
    assert created.status_code == 201
    channel = created.json()["channel"]
    assert channel.startswith("conv_")
    assert any(r.path == "/v1/conversations" for r in fakes.openai.requests)


# ----- make demo-web -----


async def test_demo_web_prints_the_page_url_serves_it_and_stops_on_ctrl_c() -> None:
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.demo_web",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert demo.stdout is not None
    printed: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not (url := _chat_url(printed)):
                line = await demo.stdout.readline()
                assert line, "demo-web ended early:\n" + "".join(printed)
                printed.append(line.decode())
        async with httpx2.AsyncClient(timeout=10) as client:
            page = await client.get(url)
            assert page.status_code == 200 and 'data-testid="answer"' in page.text
            config = (await client.get(url + "/config.json")).json()
            assert config["token_required"] is False
    finally:
        if demo.returncode is None:
            demo.send_signal(signal.SIGINT)
        async with asyncio.timeout(40):
            code = await demo.wait()
    assert code == 0, "".join(printed)


def _chat_url(lines: list[str]) -> str | None:
    for line in lines:
        found = re.search(r"http://127\.0\.0\.1:\d+/chat", line)
        if found:
            return found.group(0)
    return None
