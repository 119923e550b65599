"""`python -m service chat` (`make chat`): type a question, watch the answer stream.

A client of the service's public interfaces and nothing more. Each line typed is published as a
chat request (contract §4) to EXCHANGE_NAME with ROUTING_KEY; the answer is followed on the
request's channel of the WebSocket hub (§5): text as it streams, tool calls as status lines;
the final event (§6), read from EVENTS_EXCHANGE with a temporary queue, gives the usage and the
timing. The conversation is created first (a conversation on the Responses backend, a thread on
the Assistants backend) unless `--thread` names one to reuse.

    python -m service chat [--thread ID] [--channel NAME] [--timeout SECONDS]

Settings come from settings.toml, `.env` and the environment, like the service's. Ctrl-D or
`/quit` leaves. While an answer streams, `/stop` or Ctrl-C publishes a cancel for it (§8,
`<ROUTING_KEY>.cancel`); a second Ctrl-C leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from service.config import Settings
from service.redaction import redact_url
from service.runtime import openai_client
from service.sinks.hub import nchan_subscriber_url

QUIT = {"/quit", "/exit"}
NCHAN_META = Subprotocol("ws+meta.nchan")
STOP = "/stop"
HUB_GRACE = 2.0
"""Seconds to keep reading the hub after the final event, for payloads still on their way."""


async def create_conversation(settings: Settings) -> str:
    """A new conversation (Responses) or thread (Assistants) id."""
    client = openai_client(settings)
    try:
        if settings.openai_api == "assistants":
            from service.assistant.assistants import legacy_api

            with legacy_api():
                call = client.beta.threads.create()
            return (await call).id
        return (await client.conversations.create()).id
    finally:
        await client.close()


class Terminal:
    """Prints an answer as it streams: text inline, everything else on lines of its own."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._inline = False

    def text(self, delta: str) -> None:
        if not self._inline:
            self._out.write("assistant> ")
            self._inline = True
        self._out.write(delta)
        self._out.flush()

    def line(self, text: str) -> None:
        self.end_text()
        self._out.write(text + "\n")
        self._out.flush()

    def end_text(self) -> None:
        if self._inline:
            self._out.write("\n")
            self._inline = False


class AnswerText:
    """Rebuilds an answer from its `response` payloads in either payload mode (§5, §9).

    Each delta is appended; a payload whose `message` carries the whole answer (every one in
    `full` mode; compact snapshots; the final payload) replaces the text, which also repairs
    a payload missed on the way."""

    def __init__(self) -> None:
        self.text = ""

    def add(self, payload: dict[str, Any]) -> str:
        """Take one payload; return the text it adds to the answer (to print)."""
        if payload.get("type") != "response":
            return ""
        delta = payload.get("delta")
        message = payload.get("message")
        if isinstance(message, str) and message and message.startswith(self.text):
            added = message[len(self.text) :]
            self.text = message
            return added
        if isinstance(delta, str):
            self.text += delta
            return delta
        return ""


def nchan_payload(frame: str | bytes) -> str:
    """The message of an nchan `ws+meta.nchan` frame (`id: …` headers, a blank line, data)."""
    text = frame.decode() if isinstance(frame, bytes) else frame
    if text.startswith("id:"):
        return text.partition("\n\n")[2]
    return text


@dataclass
class _Turn:
    """One question in flight: its hub payloads and its final event."""

    message_id: str
    payloads: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    event: asyncio.Future[dict[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ChatClient:
    """Publishes questions and follows their answers; `async with` opens and closes it all."""

    def __init__(
        self, settings: Settings, *, thread_id: str, channel: str, terminal: Terminal
    ) -> None:
        self._settings = settings
        self.thread_id = thread_id
        self.channel = channel
        self._terminal = terminal
        self._turns: dict[str, _Turn] = {}
        self._amqp: aio_pika.abc.AbstractConnection | None = None
        self._requests: AbstractExchange | None = None
        self._hub: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self.asking: str | None = None
        """The message_id of the question whose answer is streaming."""

    async def __aenter__(self) -> ChatClient:
        s = self._settings
        self._amqp = await aio_pika.connect(s.rabbitmq_url.get_secret_value(), timeout=10)
        channel = await self._amqp.channel()
        await self._listen_for_events(channel)
        try:
            requests = await self._amqp.channel(on_return_raises=True)
            self._requests = await requests.get_exchange(s.exchange_name)
        except aio_pika.exceptions.ChannelClosed:
            raise ChatError(
                f"exchange {s.exchange_name!r} does not exist: is the service running "
                "(`make run`) with the same settings?"
            ) from None
        if not await self._consumers():
            self._terminal.line(
                f"  ! nobody consumes {s.queue_name!r} right now: questions will wait in the "
                "queue until the service runs"
            )
        await self._connect_hub()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._hub is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._hub.send(_subscription("unsubscribe", self.channel))
            await self._hub.close()
        if self._amqp is not None:
            await self._amqp.close()

    async def ask(self, text: str, timeout: float) -> dict[str, Any] | None:
        """Publish one question, print its answer as it streams; return its final event."""
        message_id = f"chat-{uuid.uuid4().hex[:12]}"
        turn = self._turns[message_id] = _Turn(message_id)
        request = {
            "message": text,
            "channel": self.channel,
            "thread_id": self.thread_id if self.thread_id != self.channel else None,
            "message_id": message_id,
        }
        started = time.monotonic()
        self.asking = message_id
        try:
            await self._publish(request, message_id)
            first_text = await self._follow(turn, started + timeout)
            event = await self._final_event(turn, started + timeout)
        finally:
            del self._turns[message_id]
            self.asking = None
        if first_text is None and event is not None and event.get("text"):
            self._terminal.text(str(event["text"]))  # nothing came through the hub
        self._terminal.end_text()
        self._terminal.line(_summary(event, time.monotonic() - started, first_text, timeout))
        return event

    async def _publish(self, request: dict[str, Any], message_id: str) -> None:
        assert self._requests is not None
        try:
            await self._requests.publish(
                aio_pika.Message(
                    json.dumps(request, ensure_ascii=False).encode(),
                    content_type="application/json",
                    message_id=message_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=self._settings.routing_key,
                mandatory=True,
            )
        except (aio_pika.exceptions.DeliveryError, aio_pika.exceptions.PublishError):
            raise ChatError(
                f"no queue is bound to {self._settings.exchange_name!r} with routing key "
                f"{self._settings.routing_key!r}: is the service running?"
            ) from None

    async def stop(self) -> None:
        """Cancel the answer that is streaming (contract §8)."""
        if self.asking is None or self._requests is None:
            return
        await self._requests.publish(
            aio_pika.Message(
                json.dumps({"message_id": self.asking}).encode(), content_type="application/json"
            ),
            routing_key=f"{self._settings.routing_key}.cancel",
        )
        self._terminal.line("  (stop sent)")

    async def _follow(self, turn: _Turn, deadline: float) -> float | None:
        """Print the request's hub payloads until its final one; the time of the first text."""
        first_text: float | None = None
        answer = AnswerText()
        start = time.monotonic()
        grace_until: float | None = None
        while True:
            now = time.monotonic()
            if turn.event.done() and grace_until is None:
                grace_until = now + HUB_GRACE  # the event is here: the hub may lag a little
            limit = min(deadline, grace_until) if grace_until is not None else deadline
            if now >= limit:
                return first_text
            try:
                payload = await asyncio.wait_for(turn.payloads.get(), min(limit - now, 0.25))
            except TimeoutError:
                continue
            added = answer.add(payload)
            if added:
                if first_text is None:
                    first_text = time.monotonic() - start
                self._terminal.text(added)
            elif payload.get("type") == "tool" and payload.get("status") == "processing":
                self._terminal.line(f"  · {payload.get('message', '')}")
            elif payload.get("type") in ("error", "timeout"):
                error = payload.get("error") or {}
                details = payload.get("error_details") or payload.get("message", "")
                self._terminal.line(f"  ! {error.get('code', payload['type'])}: {details}")
            if payload.get("final_message") is True:
                return first_text

    async def _final_event(self, turn: _Turn, deadline: float) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                return await asyncio.shield(turn.event)
        except TimeoutError:
            return None

    # -- wiring --------------------------------------------------------------------------------

    async def _listen_for_events(self, channel: AbstractChannel) -> None:
        s = self._settings
        # Declared as the service declares it, so the chat can start before the service.
        exchange = await channel.declare_exchange(
            s.events_exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for outcome in ("completed", "failed"):
            await queue.bind(exchange, routing_key=f"{s.routing_key}.{outcome}")
        await queue.consume(self._on_event, no_ack=True)

    async def _consumers(self) -> int:
        assert self._amqp is not None
        probe = await self._amqp.channel()
        try:
            queue = await probe.declare_queue(self._settings.queue_name, passive=True)
            return queue.declaration_result.consumer_count or 0
        except aio_pika.exceptions.ChannelClosed:
            return 0
        finally:
            if not probe.is_closed:
                await probe.close()

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            event = json.loads(message.body)
        except ValueError:
            return
        turn = self._turns.get(str(event.get("message_id"))) if isinstance(event, dict) else None
        if turn is not None and not turn.event.done():
            turn.event.set_result(event)

    async def _connect_hub(self) -> None:
        s = self._settings
        token = s.websocket_token.get_secret_value()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        nchan = s.hub_protocol == "nchan"
        # nchan: a browser-like subscriber of the channel (no token, no subscription frames).
        uri = nchan_subscriber_url(s, self.channel) if nchan else s.websocket_uri
        try:
            if nchan:
                self._hub = await connect(uri, subprotocols=[NCHAN_META], open_timeout=5)
            else:
                self._hub = await connect(uri, additional_headers=headers, open_timeout=5)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            self._terminal.line(
                f"  ! hub {redact_url(uri)} not reachable ({type(exc).__name__}): answers "
                "will be shown from the final event, without streaming"
            )
            return
        if not nchan:
            await self._hub.send(_subscription("subscribe", self.channel))
        self._reader = asyncio.create_task(self._read_hub(self._hub))

    async def _read_hub(self, hub: ClientConnection) -> None:
        try:
            nchan = self._settings.hub_protocol == "nchan"
            async for frame in hub:
                try:
                    data = json.loads(nchan_payload(frame) if nchan else frame)
                except ValueError:
                    continue
                if nchan:
                    data = {"channel": self.channel, "payload": data}
                if not isinstance(data, dict) or data.get("channel") != self.channel:
                    continue
                payload = data.get("payload")
                if isinstance(payload, dict):
                    turn = self._turns.get(str(payload.get("message_id")))
                    if turn is not None:
                        turn.payloads.put_nowait(payload)
        except ConnectionClosed:
            self._terminal.line("  ! the hub closed the connection: answers come from events now")


class ChatError(Exception):
    """Something the user can fix (the service is not running, wrong settings)."""


def _subscription(action: str, channel: str) -> str:
    return json.dumps(
        {"channel": "subscription", "payload": {"action": action, "channel": channel}}
    )


def _summary(
    event: dict[str, Any] | None, took: float, first_text: float | None, timeout: float
) -> str:
    if event is None:
        return f"  (no final event within {timeout:g} s: is the service running?)"
    if event.get("event") == "failed":
        retry = ", retryable" if event.get("retryable") else ""
        return f"  (failed: {event.get('code')}: {event.get('message')}{retry}; {took:.2f} s)"
    parts = [f"done in {took:.2f} s", f"service {event.get('duration_ms', 0) / 1000:.2f} s"]
    if first_text is not None:
        parts.append(f"first text after {first_text:.2f} s")
    usage = event.get("usage")
    if isinstance(usage, dict):
        parts.append(f"tokens {usage.get('input_tokens')} in / {usage.get('output_tokens')} out")
    calls = event.get("tool_calls") or []
    if calls:
        tools = ", ".join(
            f"{call.get('name')} {call.get('duration_ms')} ms{'' if call.get('ok') else ' (failed)'}"
            for call in calls
        )
        parts.append(f"tools: {tools}")
    if event.get("hub_delivered") is False:
        parts.append("the hub missed some of it")
    return "  (" + " · ".join(parts) + ")"


def _start_line_reader(source: TextIO) -> asyncio.Queue[str | None]:
    """Lines of `source` on a daemon thread, so that Ctrl-C never waits for a pending read."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in source:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="chat-stdin", daemon=True).start()
    return lines


async def run_chat(
    settings: Settings,
    *,
    thread_id: str | None = None,
    channel: str | None = None,
    timeout: float | None = None,
    source: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
) -> int:
    """The chat loop; returns the exit status."""
    terminal = Terminal(out)
    interactive = source.isatty()
    if thread_id is None:
        thread_id = await create_conversation(settings)
        terminal.line(f"new conversation {thread_id}")
    channel = channel or thread_id
    timeout = timeout or settings.run_timeout + settings.hub_send_timeout + 10
    quit_now = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, quit_now.set)
    try:
        async with ChatClient(
            settings, thread_id=thread_id, channel=channel, terminal=terminal
        ) as client:
            where = f"{settings.exchange_name}/{settings.routing_key}"
            terminal.line(
                f"conversation {thread_id} · channel {channel} · requests to {where} · "
                "/quit or Ctrl-D to leave"
            )
            lines = _start_line_reader(source)
            while not quit_now.is_set():
                if interactive:
                    out.write("you> ")
                    out.flush()
                line = await _next_line(lines, quit_now)
                if line is None or line.strip() in QUIT:
                    break
                text = line.strip()
                if not text:
                    continue
                if not interactive:
                    terminal.line(f"you> {text}")
                if not await _ask_with_stop(client, text, timeout, lines, quit_now):
                    terminal.line("  (interrupted)")
                    break
            if interactive:
                out.write("\n")
    except ChatError as exc:
        terminal.line(f"error: {exc}")
        return 1
    except (aio_pika.exceptions.AMQPConnectionError, OSError) as exc:
        url = redact_url(settings.rabbitmq_url.get_secret_value())
        terminal.line(f"error: cannot reach RabbitMQ at {url}: {type(exc).__name__}")
        return 1
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    return 0


async def _ask_with_stop(
    client: ChatClient,
    text: str,
    timeout: float,
    lines: asyncio.Queue[str | None],
    quit_now: asyncio.Event,
) -> bool:
    """Ask, following the answer; `/stop` or a first Ctrl-C cancels it, a second one leaves
    (returns False). Other lines typed meanwhile are asked afterwards."""
    asking = asyncio.create_task(client.ask(text, timeout))
    later: list[str | None] = []
    stop_sent = False
    while not asking.done():
        getting = asyncio.create_task(lines.get())
        stopping = asyncio.create_task(quit_now.wait())
        await asyncio.wait({asking, getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if getting.done():
            line = getting.result()
            if line is not None and line.strip() == STOP:
                await client.stop()
            else:
                later.append(line)
        else:
            getting.cancel()
        if quit_now.is_set() and not asking.done():
            if stop_sent:
                asking.cancel()
                return False
            stop_sent = True
            quit_now.clear()
            await client.stop()
    for line in later:
        lines.put_nowait(line)
    asking.result()
    return True


async def _next_line(lines: asyncio.Queue[str | None], quit_now: asyncio.Event) -> str | None:
    getting = asyncio.create_task(lines.get())
    stopping = asyncio.create_task(quit_now.wait())
    await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not getting.done():
        getting.cancel()
        return None
    return getting.result()
