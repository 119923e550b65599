"""`make demo-web`: the web chat offline — the demo's stand-ins, a hub, the service with
WEB_CHAT=true — then the page's URL, until Ctrl-C.

The stand-ins are `make demo`'s (`python -m tests.fakes --demo`: a scripted model that calls
`get_weather` for weather questions and echoes anything else word by word, fake OpenWeather
and KMC). The hub is nginx + nchan (`HUB_PROTOCOL=nchan`, compact payloads) when this machine
can run `make hub`, else the development hub of the fakes (`HUB=envelope` forces it).
`HTTP_PORT` picks the page's port (default: a free one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import uuid

import aio_pika

from scripts.demo import ROOT, _wait_for_consumer, start_fakes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def hub_settings(urls: dict[str, str], stack: contextlib.ExitStack) -> dict[str, str]:
    """The service's hub settings; the hub stops when `stack` closes."""
    if os.environ.get("HUB", "nchan") != "envelope":
        try:
            # tests/nchan.py: the shipped deploy/nginx/ config, in its own prefix, on a free port.
            from tests.nchan import NchanHub

            token = secrets.token_urlsafe(16)
            nchan = NchanHub.start(token=token)
        except (ImportError, RuntimeError, OSError) as exc:
            print(f"· no nchan hub ({exc}): using the development hub; `make hub` installs it")
        else:
            stack.callback(nchan.stop)
            return {
                "HUB_PROTOCOL": "nchan",
                "HUB_PAYLOAD_MODE": "compact",
                "WEBSOCKET_URI": nchan.publish_url,
                "WEBSOCKET_TOKEN": token,
                "HUB_PUBLIC_URL": nchan.subscribe_url,
            }
    # The development hub of the fakes: the envelope protocol of contract §5.
    return {"HUB_PROTOCOL": "envelope", "WEBSOCKET_URI": urls["WEBSOCKET_URI"]}


async def main() -> int:
    run = uuid.uuid4().hex[:8]
    names = {
        "EXCHANGE_NAME": f"demo_web_{run}",
        "QUEUE_NAME": f"demo_web_{run}_requests",
        "ROUTING_KEY": "assistant.request",
    }
    rabbitmq = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    port = int(os.environ.get("HTTP_PORT") or 0) or free_port()
    fakes, urls = start_fakes()
    service: subprocess.Popen[bytes] | None = None
    connection = await aio_pika.connect_robust(rabbitmq)
    try:
        with contextlib.ExitStack() as hub:
            hub_env = hub_settings(urls, hub)
            env = {
                **os.environ,
                **urls,
                **hub_env,
                **names,
                "RABBITMQ_URL": rabbitmq,
                "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
                "WEB_CHAT": "true",
                "HTTP_HOST": "127.0.0.1",
                "HTTP_PORT": str(port),
            }
            log_path = ROOT / ".demo" / "web-service.log"
            log_path.parent.mkdir(exist_ok=True)
            with log_path.open("wb") as log:
                service = subprocess.Popen(
                    [sys.executable, "-m", "faststream", "run", "service.app:app"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            await _wait_for_consumer(connection, names["QUEUE_NAME"])
            where = hub_env.get("HUB_PUBLIC_URL") or hub_env["WEBSOCKET_URI"]
            print(f"· stand-ins up; hub: {hub_env['HUB_PROTOCOL']}, browsers subscribe at {where}")
            print(f"· service log: {log_path.relative_to(ROOT)}")
            print(f"\nOpen the chat: http://127.0.0.1:{port}/chat\n", flush=True)
            print("Ask about the weather (a tool call) or anything else (echoed). Ctrl-C stops.")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            print("\n· stopping")
            return 0
    finally:
        for process in (service, fakes):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (service, fakes):
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(20)
        with contextlib.suppress(Exception):
            cleanup = await connection.channel()
            await cleanup.queue_delete(names["QUEUE_NAME"])
            await cleanup.queue_delete(f"{names['QUEUE_NAME']}_failed")
            for suffix in ("", "_dlx", "_events"):
                await cleanup.exchange_delete(f"{names['EXCHANGE_NAME']}{suffix}")
        await connection.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
