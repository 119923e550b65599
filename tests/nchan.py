"""Start the project's nginx + nchan hub (deploy/nginx/) on a free port, for tests and tools.

    hub = NchanHub.start(token="secret")        # own temp prefix, own port, own pid file
    hub.publish_url   # ws://127.0.0.1:PORT/pub   -> WEBSOCKET_URI (service publishes here)
    hub.http_publish_url  # http://127.0.0.1:PORT/pub (the HTTP POST publisher)
    hub.subscribe_url  # ws://127.0.0.1:PORT/sub  -> HUB_PUBLIC_URL (browsers subscribe here)
    hub.eventsource_url  # http://127.0.0.1:PORT/sub (EventSource)
    hub.restart()  # stop + start on the same port (channels are lost, as with a real restart)
    hub.stop()     # stop nginx and remove the prefix

or as a context manager: ``with NchanHub.start() as hub: ...``. It renders exactly the files
`make hub` uses, so the tests run the configuration the project ships.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "nginx"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # /usr/sbin is not on every user's PATH
NCHAN_MODULES = (
    "/usr/lib/nginx/modules/ngx_nchan_module.so",
    "/usr/share/nginx/modules/ngx_nchan_module.so",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render(template: str, values: dict[str, str]) -> str:
    """Replace every ${NAME} of `values` in `template`, as envsubst does."""
    for name, value in values.items():
        template = template.replace("${" + name + "}", value)
    return template


def nchan_module() -> str:
    for path in NCHAN_MODULES:
        if os.path.exists(path):
            return path
    raise RuntimeError("ngx_nchan_module.so not found: run `make hub` once (installs it as root)")


class NchanHub:
    """One nginx + nchan process with the project's configuration; see the module docstring."""

    def __init__(self, prefix: Path, port: int, token: str) -> None:
        self.prefix = prefix
        self.port = port
        self.token = token
        self.base = f"127.0.0.1:{port}"

    @property
    def publish_url(self) -> str:
        return f"ws://{self.base}/pub"

    @property
    def http_publish_url(self) -> str:
        return f"http://{self.base}/pub"

    @property
    def subscribe_url(self) -> str:
        return f"ws://{self.base}/sub"

    @property
    def eventsource_url(self) -> str:
        return f"http://{self.base}/sub"

    @classmethod
    def start(cls, token: str = "", port: int | None = None) -> NchanHub:
        prefix = Path(tempfile.mkdtemp(prefix="nchan-hub-"))
        hub = cls(prefix, port or free_port(), token)
        hub._write_config()
        hub._run()
        return hub

    def _write_config(self) -> None:
        values = {
            "HUB_LISTEN": self.base,
            "HUB_TOKEN": self.token,
            "HUB_OPEN_PUBLISHER": "0" if self.token else "1",
            "HUB_PREFIX": str(self.prefix),
            "HUB_NCHAN_MODULE": nchan_module(),
        }
        (self.prefix / "tmp").mkdir(exist_ok=True)
        for name in ("nginx.conf", "nchan.conf"):
            text = render((DEPLOY / name).read_text(), values)
            (self.prefix / name).write_text(text)

    def _run(self) -> None:
        done = subprocess.run(
            [NGINX, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"nginx did not start: {done.stderr.strip()}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            time.sleep(0.02)
        raise RuntimeError(f"nginx did not listen on {self.base}: {self.error_log()}")

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def pid(self) -> int | None:
        try:
            return int((self.prefix / "nginx.pid").read_text())
        except (OSError, ValueError):
            return None

    def error_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.prefix / "error.log").read_text()[-2000:]
        return ""

    def kill(self) -> None:
        """Stop nginx now (SIGTERM: fast shutdown) and wait until the port is free."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            (self.prefix / "nginx.pid").unlink()

    def restart(self) -> None:
        self.kill()
        self._run()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> NchanHub:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- subscribers, as browsers are ---------------------------------------------------------


def split_meta(frame: str | bytes) -> tuple[str, str]:
    """(id, data) of a `ws+meta.nchan` frame: `id: <id>` and other headers, a blank line, data."""
    text = frame.decode() if isinstance(frame, bytes) else frame
    head, _, data = text.partition("\n\n")
    for line in head.split("\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "id":
            return value.strip(), data
    return "", text


async def ws_subscribe(
    url: str, count: int, *, last_event_id: str | None = None, timeout: float = 10
) -> list[tuple[str, str]]:
    """Read `count` messages as a browser WebSocket with subprotocol ws+meta.nchan does;
    `last_event_id` resumes after that message. Returns (id, data) pairs."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    if last_event_id is not None:
        url = f"{url}?last_event_id={last_event_id}"
    got: list[tuple[str, str]] = []
    async with asyncio.timeout(timeout):
        async with connect(url, subprotocols=[Subprotocol("ws+meta.nchan")]) as ws:
            while len(got) < count:
                got.append(split_meta(await ws.recv()))
    return got


async def sse_subscribe(
    url: str, count: int, *, last_event_id: str | None = None, timeout: float = 10
) -> list[tuple[str, str]]:
    """Read `count` messages as a browser EventSource does (`Last-Event-ID` to resume)."""
    import asyncio

    import httpx2

    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    got: list[tuple[str, str]] = []
    event_id, data = "", []
    async with (
        asyncio.timeout(timeout),
        httpx2.AsyncClient(timeout=None) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line == "":
                if data:
                    got.append((event_id, "\n".join(data)))
                    data = []
                    if len(got) >= count:
                        return got
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
    return got


if __name__ == "__main__":
    # `python -m tests.nchan`: run the hub in the foreground until Ctrl-C (for trying it out).
    import sys

    hub = NchanHub.start(token=sys.argv[1] if len(sys.argv) > 1 else "")
    print(f"WEBSOCKET_URI={hub.publish_url}\nHUB_PUBLIC_URL={hub.subscribe_url}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
