"""The process's HTTP server: FastStream's ASGI app under uvicorn, on HTTP_HOST:HTTP_PORT.

`faststream run service.app:app` calls `HttpFastStream.run`, which serves the app with uvicorn.
`--host`/`--port` given to `faststream run` still win over the settings. Uvicorn's loggers
propagate to the service's handler (same format, same redaction), its access log is off
(Prometheus scrapes would flood it), and a SIGTERM stop ends with exit status 0 like the
plain FastStream app did, instead of uvicorn re-raising the signal after its graceful shutdown.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn
from faststream.asgi import AsgiFastStream
from faststream.asgi.app import cast_uvicorn_params

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class HttpFastStream(AsgiFastStream):
    """`AsgiFastStream` that listens where the settings say."""

    def __init__(self, *args: Any, http_host: str, http_port: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http_host = http_host
        self.http_port = http_port

    async def run(
        self, log_level: int = logging.INFO, run_extra_options: dict[str, Any] | None = None
    ) -> None:
        # AsgiFastStream.run, with the settings' address and uvicorn's logging left to ours
        # (no FastStream attribute is written: the lifespan hooks take no run options).
        options = cast_uvicorn_params(
            {"host": self.http_host, "port": self.http_port, **(run_extra_options or {})}
        )
        accepted = set(inspect.signature(uvicorn.Config).parameters)
        server_options: dict[str, Any] = {"log_config": None, "access_log": False}
        server_options |= {k: v for k, v in options.items() if k in accepted}
        server = _Server(uvicorn.Config(app=self, log_level=log_level, **server_options))
        await server.serve()
        if not server.started:
            # The start-up hooks failed (uvicorn logged why): exit non-zero, as `faststream
            # run` does for a plain FastStream app.
            raise SystemExit(1)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version re-raises the captured signal once it has shut down, which
        # turns a clean SIGTERM stop into exit status -15.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
