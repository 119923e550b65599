"""The model API's HTTP transport: aiohttp under the `openai` SDK's httpx2 client.

The SDK builds its requests with httpx2 and reads responses from it; only the bytes on the wire
go through aiohttp here. What that saves, per streamed token (one SSE event, one socket read):
httpx2 -> httpcore2 -> h11 in Python, an anyio cancel scope and two clock reads per read,
versus aiohttp's C HTTP parser. And per request: httpcore2's pool scans every connection it
holds whenever a request starts or ends (O(streams) per token event at thousands of streams),
and opens each connection through anyio (a worker-thread `getaddrinfo`); aiohttp's connector
keeps idle connections per host in a list and skips resolving IP literals.

Errors are raised as the httpx2 exceptions the SDK and `service.assistant.stream` map to
`APIConnectionError`/`APITimeoutError` (`ConnectError`, `ConnectTimeout`, `ReadTimeout`,
`ReadError`, `RemoteProtocolError`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx2
from multidict import CIMultiDict


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that sends requests with one shared `aiohttp.ClientSession`."""

    def __init__(self, *, keepalive: float = 30.0, trust_env: bool = True) -> None:
        self._keepalive = keepalive
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the event loop that runs it.
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, keepalive_timeout=self._keepalive, ttl_dns_cache=60
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # The SDK's headers go out as they are: no aiohttp defaults added to them.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            auto_decompress=False,  # httpx2 decodes Content-Encoding itself
            trust_env=self._trust_env,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        session = self._session or self._open()
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("pool"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        headers = CIMultiDict(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() not in (b"host", b"content-length", b"transfer-encoding")
        )
        body = await request.aread()
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
                compress=None,
            )
        except TimeoutError as exc:
            raise httpx2.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx2.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx2.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx2.ConnectError(str(exc), request=request) from exc
        return httpx2.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(response, request),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class _ResponseStream(httpx2.AsyncByteStream):
    """A response body as httpx2 reads it: chunks as they arrive; errors as httpx2's."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while chunk := await content.readany():
                yield chunk
        except TimeoutError as exc:  # aiohttp's sock_read timeout
            raise httpx2.ReadTimeout(str(exc) or "read timed out", request=self._request) from exc
        except aiohttp.ClientPayloadError as exc:
            raise httpx2.RemoteProtocolError(str(exc), request=self._request) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise httpx2.ReadError(str(exc), request=self._request) from exc

    async def aclose(self) -> None:
        # A body read to its end leaves the connection reusable; one left halfway closes it.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()
