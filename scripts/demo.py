"""`make demo`: the whole path offline, with stand-ins for OpenAI, OpenWeather, KMC and the hub.

Starts the fakes (`python -m tests.fakes --demo`: the model is a scripted stand-in that calls
`get_weather` and answers from its output), the real service against the local RabbitMQ,
publishes one request, and prints the answer as it streams to the hub channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from websockets.asyncio.client import connect

from service.chat import AnswerText

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What's the weather in Makati?"


def start_fakes() -> tuple[subprocess.Popen[str], dict[str, str]]:
    fakes = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes", "--demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fakes.stdout is not None
    urls: dict[str, str] = {}
    while len(urls) < 7:
        line = fakes.stdout.readline()
        if not line:
            raise SystemExit("the fakes did not start")
        key, _, value = line.strip().partition("=")
        urls[key] = value
    return fakes, urls


async def main() -> int:
    run = uuid.uuid4().hex[:8]
    names = {
        "EXCHANGE_NAME": f"demo_{run}",
        "QUEUE_NAME": f"demo_{run}_requests",
        "ROUTING_KEY": "assistant.request",
    }
    rabbitmq = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    fakes, urls = start_fakes()
    env = {**os.environ, **urls, **names, "RABBITMQ_URL": rabbitmq, "LOG_LEVEL": "WARNING"}
    print("· stand-ins up: fake OpenAI (scripted model), fake OpenWeather/KMC, dev hub")
    log_path = ROOT / ".demo" / "service.log"
    log_path.parent.mkdir(exist_ok=True)
    with log_path.open("w") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "faststream", "run", "service.app:app"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    connection = await aio_pika.connect_robust(rabbitmq)
    try:
        await _wait_for_consumer(connection, names["QUEUE_NAME"])
        channel = await connection.channel()
        print(f"· service consuming {names['QUEUE_NAME']}")
        events = await channel.declare_queue(exclusive=True)
        exchange = await channel.declare_exchange(
            f"{names['EXCHANGE_NAME']}_events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        await events.bind(exchange, routing_key="#")

        conversation = f"conv_demo_{run}"
        async with connect(urls["WEBSOCKET_URI"]) as hub:
            await hub.send(_subscribe(conversation))
            request = {"message": QUESTION, "channel": conversation, "message_id": f"demo-{run}"}
            print(f"\n> {QUESTION}\n")
            started = time.monotonic()
            requests_exchange = await channel.get_exchange(names["EXCHANGE_NAME"])
            await requests_exchange.publish(
                aio_pika.Message(json.dumps(request).encode(), content_type="application/json"),
                routing_key=names["ROUTING_KEY"],
            )
            answer = AnswerText()  # either HUB_PAYLOAD_MODE: deltas, snapshots, final message
            async with asyncio.timeout(60):
                async for frame in hub:
                    message = json.loads(frame)
                    if message.get("channel") == conversation and _show(message["payload"], answer):
                        break
            async with asyncio.timeout(30), events.iterator() as incoming:
                async for delivered in incoming:
                    event = json.loads(delivered.body)
                    await delivered.ack()
                    break
        took = time.monotonic() - started
        print(f"\n\n· final event: {event['event']} in {took:.2f}s", end="")
        if event["event"] == "completed":
            tools = ", ".join(f"{c['name']} ({c['duration_ms']} ms)" for c in event["tool_calls"])
            print(f", tools: {tools or 'none'}, usage: {event['usage']}")
        else:
            print(f", code {event['code']}: {event['message']}")
        print(f"· service log: {log_path.relative_to(ROOT)}")
        return 0 if event["event"] == "completed" else 1
    finally:
        for process in (service, fakes):
            process.send_signal(signal.SIGTERM)
        for process in (service, fakes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
        with contextlib.suppress(Exception):
            cleanup = await connection.channel()
            await cleanup.queue_delete(names["QUEUE_NAME"])
            await cleanup.queue_delete(f"{names['QUEUE_NAME']}_failed")
            for suffix in ("", "_dlx", "_events"):
                await cleanup.exchange_delete(f"{names['EXCHANGE_NAME']}{suffix}")
        await connection.close()


def _subscribe(channel: str) -> str:
    return json.dumps(
        {"channel": "subscription", "payload": {"action": "subscribe", "channel": channel}}
    )


def _show(payload: dict[str, Any], answer: AnswerText) -> bool:
    """Print one payload as a person would want to see it; True on the final one."""
    if payload["type"] == "response":
        print(answer.add(payload), end="", flush=True)
    elif payload["type"] == "tool":
        print(f"  [{payload['message']}]")
    elif payload["type"] in ("error", "timeout"):
        print(f"\n  [error {payload['error']['code']}: {payload['error_details']}]")
    elif payload["status"] == "started":
        print("  [started]")
    return bool(payload["final_message"])


async def _wait_for_consumer(connection: aio_pika.abc.AbstractConnection, queue: str) -> None:
    for _ in range(300):
        with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
            probe = await connection.channel()
            declared = await probe.declare_queue(queue, passive=True)
            consumers = declared.declaration_result.consumer_count
            await probe.close()
            if consumers:
                return
        await asyncio.sleep(0.1)
    raise SystemExit("the service did not start consuming")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
