"""Run the fakes for ``make demo`` / ``make bench``::

    python -m tests.fakes --openai-port 8100 --hub-port 4000 [--apis-port 8200] [--print] [--demo]

Prints ``KEY=value`` lines (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``WEBSOCKET_URI`` and, when
``tests/fakes/apis.py`` is there, ``OPENWEATHER_BASE_URL``/``OPENWEATHER_API_KEY``/
``KMC_API_URL``/``KMC_API_KEY``) usable as the service's environment, then serves until
SIGINT/SIGTERM. ``--demo`` scripts the fake model to call ``get_weather`` for messages about
the weather and to answer from the tool output, a few words every 0.05 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
from collections.abc import Sequence
from typing import Any

from tests.fakes.hub import PayloadPrinter, RecordingHub
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Step, Text, ToolCall, tool_outputs, user_text

DEMO_INTERVAL = 0.05
_CITY = re.compile(r"\b(?:in|for|at)\s+([A-Z][\w.'-]*(?:\s+[A-Z][\w.'-]*)*)")


def demo_city(message: str) -> str:
    """The city a weather question is about: "weather in Cebu City?" -> "Cebu City"."""
    found = _CITY.search(message)
    return found.group(1) if found else "Makati"


def _words(sentence: str, per_chunk: int = 2) -> Text:
    words = re.findall(r"\S+\s*", sentence)
    chunks = ["".join(words[i : i + per_chunk]) for i in range(0, len(words), per_chunk)]
    return Text(*chunks, interval=DEMO_INTERVAL)


def _offers(body: dict[str, Any], name: str) -> bool:
    # Assistants runs carry no tools (they are on the assistant): assume it is offered.
    tools = body.get("tools")
    if tools is None:
        return True
    names = {t.get("name") or (t.get("function") or {}).get("name") for t in tools}
    return name in names


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def ask_weather(body: dict[str, Any]) -> Sequence[Step]:
    """Demo turn 1: call ``get_weather`` for the city named in the message."""
    if not _offers(body, "get_weather"):
        return [_words("I would check the weather, but no weather tool is configured.")]
    return [ToolCall("get_weather", _dumps({"city": demo_city(user_text(body))}))]


def answer_weather(body: dict[str, Any]) -> Sequence[Step]:
    """Demo turn 2: a sentence built from the ``get_weather`` output."""
    outputs = tool_outputs(body)
    try:
        weather = json.loads(outputs[0].output) if outputs else {}
    except ValueError:
        weather = {}
    if not isinstance(weather, dict) or "temperature" not in weather:
        reason = weather.get("error") if isinstance(weather, dict) else None
        return [_words(f"Sorry, I could not get the weather ({reason or 'no data'}).")]
    location = weather.get("location") or {}
    place = location.get("name") or "there"
    sentence = (
        f"It is {weather['temperature']:.0f}°C in {place} right now with "
        f"{weather.get('description', 'no description')}"
    )
    if "feels_like" in weather:
        sentence += f", and it feels like {weather['feels_like']:.0f}°C"
    return [_words(sentence + ".")]


def install_demo_script(fake: FakeOpenAI) -> None:
    """Messages mentioning the weather: call ``get_weather``, then answer from its output."""
    fake.script(re.compile("weather", re.IGNORECASE), [ask_weather, answer_weather])


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeOpenAI(echo_interval=DEMO_INTERVAL if args.demo else 0.0)
    if args.demo:
        install_demo_script(fake)
    hub = RecordingHub(printer=PayloadPrinter() if args.print else None)
    await fake.start(args.host, args.openai_port)
    await hub.start(args.host, args.hub_port)
    env = {
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "sk-fake-demo",
        "WEBSOCKET_URI": hub.uri,
    }
    apis: Any = None
    try:
        from tests.fakes.apis import FakeApis
    except ImportError:
        pass
    else:
        apis = FakeApis()
        await apis.start(args.host, args.apis_port)
        env |= {
            "OPENWEATHER_BASE_URL": apis.base_url,
            "OPENWEATHER_API_KEY": apis.openweather_key,
            "KMC_API_URL": apis.base_url,
            "KMC_API_KEY": apis.kmc_key,
        }
    for key, value in env.items():
        print(f"{key}={value}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await hub.stop()
        await fake.stop()
        if apis is not None:
            await apis.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes", description="Fake OpenAI, hub and tool APIs on loopback."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--openai-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--hub-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--apis-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--print", action="store_true", help="print hub payloads as they arrive")
    parser.add_argument("--demo", action="store_true", help="script the weather tool call")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
