"""The nchan HTTP publisher's own HTTP/1.1 client (service/sinks/hub/http1.py): against the real
nginx + nchan (pipelined POSTs in order, keep-alive reuse, a refused token), and against a tiny
local server that answers the way misbehaving servers do."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from service.sinks.hub.http1 import BadResponse, Http1Pool
from tests.nchan import NchanHub, ws_subscribe

TOKEN = "http1-token-SECRET-7"
OK = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@pytest.fixture(scope="module")
def nchan() -> Iterator[NchanHub]:
    with NchanHub.start(token=TOKEN) as hub:
        yield hub


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


async def test_pipelined_posts_reach_nchan_in_order_on_one_kept_alive_connection(
    nchan: NchanHub,
) -> None:
    pool = Http1Pool(nchan.http_publish_url, headers=auth())
    channel = f"conv_{uuid.uuid4().hex[:12]}"
    target = pool.path_for(channel)
    bodies = [json.dumps({"seq": i}).encode() for i in range(40)]
    try:
        statuses: list[int] = []
        while len(statuses) < len(bodies):
            statuses += await pool.post_many(target, bodies[len(statuses) : len(statuses) + 16])
        statuses.append(await pool.post(target, b'{"seq":40}'))
        assert all(200 <= status < 300 for status in statuses), statuses
        assert len(pool._open) == 1  # every batch reused the same connection
    finally:
        await pool.aclose()
    received = await ws_subscribe(f"{nchan.subscribe_url}/{channel}", 41)
    assert [json.loads(data)["seq"] for _, data in received] == list(range(41))


async def test_a_wrong_token_is_answered_with_its_status_not_an_exception(
    nchan: NchanHub,
) -> None:
    pool = Http1Pool(nchan.http_publish_url, headers=auth("wrong"))
    try:
        statuses = await pool.post_many(pool.path_for("conv_refused"), [b"{}", b"{}"])
    finally:
        await pool.aclose()
    assert statuses[0] in (401, 403)


# -- a tiny server that answers what each test scripts -------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.url = ""


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Server:
        info = Server()

        async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            info.connections += 1
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(counted, "127.0.0.1", 0)
        servers.append(server)
        info.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/pub"
        return info

    yield start
    for server in servers:
        server.close()


async def answering(answers: list[bytes], then_close: bool = False) -> Handler:
    """Answers each request with the next of `answers` (shared by every connection); with
    `then_close`, a connection is closed after one answer."""
    queue = iter(answers)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(next(queue))
            await writer.drain()
            if then_close:
                return

    return handler


async def test_chunked_and_100_continue_answers_are_read_whole_and_the_connection_reused(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    continued = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    server = await serve(await answering([chunked, continued, OK]))
    pool = Http1Pool(server.url)
    try:
        assert await pool.post_many(pool.path_for("c"), [b"1", b"2"]) == [200, 201]
        assert await pool.post(pool.path_for("c"), b"3") == 201
    finally:
        await pool.aclose()
    assert server.connections == 1


async def test_connection_close_mid_batch_returns_the_answered_prefix(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    closing = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    server = await serve(await answering([closing, closing], then_close=True))
    pool = Http1Pool(server.url)
    try:
        assert await pool.post_many(pool.path_for("c"), [b"1", b"2", b"3"]) == [201]
        # The rest goes on a new connection.
        assert await pool.post_many(pool.path_for("c"), [b"2", b"3"]) == [201]
    finally:
        await pool.aclose()
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced_once_without_an_error(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    # Answers one request per connection, then closes without saying so (an idle timeout).
    server = await serve(await answering([OK, OK], then_close=True))
    pool = Http1Pool(server.url)
    try:
        assert await pool.post(pool.path_for("c"), b"1") == 201
        assert await pool.post(pool.path_for("c"), b"2") == 201
    finally:
        await pool.aclose()
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP 220 hello\r\n\r\n",
        b"HTTP/1.1 2x1 Created\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 201 Created\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "bad-status", "two-lengths", "bad-length", "gzip-only", "bad-chunk"],
)
async def test_a_malformed_answer_raises_bad_response_and_drops_the_connection(
    serve: Callable[[Handler], Awaitable[Server]], answer: bytes
) -> None:
    server = await serve(await answering([answer, OK]))
    pool = Http1Pool(server.url)
    try:
        with pytest.raises(BadResponse):
            await pool.post(pool.path_for("c"), b"1")
        assert not pool._open
        assert await pool.post(pool.path_for("c"), b"2") == 201  # a fresh connection works
    finally:
        await pool.aclose()


async def test_a_server_that_closes_mid_body_raises_connection_reset(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    cut = b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\nonly a part"
    server = await serve(await answering([cut], then_close=True))
    pool = Http1Pool(server.url)
    try:
        with pytest.raises(ConnectionResetError):
            await pool.post(pool.path_for("c"), b"1")
    finally:
        await pool.aclose()


async def test_a_server_that_never_answers_times_out(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await serve(silent)
    pool = Http1Pool(server.url, timeout=0.3)
    try:
        with pytest.raises(TimeoutError):
            await pool.post(pool.path_for("c"), b"1")
        assert not pool._open
    finally:
        await pool.aclose()


def test_channel_names_are_percent_encoded_into_one_path_segment() -> None:
    pool = Http1Pool("http://127.0.0.1:1/pub/")
    assert pool.path_for("conv_a:b.c-1") == b"/pub/conv_a:b.c-1"
    assert pool.path_for("a b/c?d#é") == b"/pub/a%20b%2Fc%3Fd%23%C3%A9"
