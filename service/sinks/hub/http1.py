"""A minimal HTTP/1.1 keep-alive client for one purpose: `POST` a small body, read the status.

The nchan HTTP publisher sends thousands of tiny POSTs a second; a general client (httpx2)
spends ~400 µs of CPU on each, this one ~50. What it does: a pool of at most `size`
connections (asyncio streams, plain or TLS), one batch in flight per connection (`post_many`
pipelines a lane's queued POSTs in one write and reads the answers in order); `Content-Length` request bodies; responses framed by `Content-Length`, `chunked`
or the connection's end; `Connection: close` honoured; 1xx answers skipped. A request that
finds a reused (idle) connection closed before any byte of the answer is sent once more on a
fresh connection, as browsers do. Errors: `OSError`/`TimeoutError` for the network,
`BadResponse` for an answer that is not HTTP/1.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from urllib.parse import quote, urlsplit

from service.sinks.hub.base import HubUnavailable

# Response heads larger than this are refused (nchan's are ~200 bytes).
MAX_HEAD = 64 * 1024
# A path segment keeps these as they are (RFC 3986 pchar), everything else is %-encoded.
_SEGMENT_SAFE = "-._~!$&'()*+,;=:@"


class BadResponse(HubUnavailable):
    """The server's answer was not well-formed HTTP/1.x: the connection is dropped."""


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Http1Pool:
    """`POST`s to one origin over at most `size` keep-alive connections."""

    def __init__(
        self,
        base_url: str,
        *,
        size: int = 32,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self._prefix = parts.path.rstrip("/")
        default_port = self._port == (443 if parts.scheme == "https" else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        host_header = host if default_port else f"{host}:{self._port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head_tail = f"Host: {host_header}\r\n{extra}Content-Length: ".encode("latin-1")
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(size)
        self._open: set[_Connection] = set()
        self._closed = False

    def path_for(self, segment: str) -> bytes:
        """The request target for `<base path>/<segment>` (the segment %-encoded)."""
        return f"{self._prefix}/{quote(segment, safe=_SEGMENT_SAFE)}".encode("ascii")

    def _request(self, target: bytes, body: bytes) -> bytes:
        return b"".join(
            (b"POST ", target, b" HTTP/1.1\r\n", self._head_tail, b"%d\r\n\r\n" % len(body), body)
        )

    async def post(self, target: bytes, body: bytes) -> int:
        """Send `POST target` with `body`; return the final status code (body discarded)."""
        return (await self.post_many(target, [body]))[0]

    async def post_many(self, target: bytes, bodies: list[bytes]) -> list[int]:
        """`POST` every body to `target`, pipelined on one connection, in order; return the
        statuses of the answered ones, a prefix of `bodies` (at least one, or an exception):
        the server may close the connection after any answer, and the rest must go again."""
        request = b"".join([self._request(target, body) for body in bodies])
        async with self._slots, asyncio.timeout(self._timeout):
            while True:
                conn, reused = await self._acquire()
                statuses: list[int] = []
                keep = True
                try:
                    conn.writer.write(request)
                    if conn.writer.transport.get_write_buffer_size() > 2**16:
                        await conn.writer.drain()
                    while keep and len(statuses) < len(bodies):
                        status, keep = await self._response(conn, reused and not statuses)
                        statuses.append(status)
                except _Stale:
                    self._discard(conn)
                    continue  # an idle connection the server had closed: once more, fresh
                except (OSError, BadResponse):
                    self._discard(conn)
                    if statuses:
                        return statuses  # the answered ones count; the rest go again
                    raise
                except BaseException:
                    self._discard(conn)
                    raise
                if keep and not self._closed:
                    self._idle.append(conn)
                else:
                    self._discard(conn)
                return statuses

    async def _acquire(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn, True
            self._discard(conn)
        async with asyncio.timeout(self._connect_timeout):
            reader, writer = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
                limit=MAX_HEAD,
            )
        conn = _Connection(reader, writer)
        self._open.add(conn)
        return conn, False

    def _discard(self, conn: _Connection) -> None:
        self._open.discard(conn)
        conn.close()

    async def _response(self, conn: _Connection, first_on_reused: bool) -> tuple[int, bool]:
        """Read one answer: (status, whether the connection stays open)."""
        reader = conn.reader
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if first_on_reused and not exc.partial:
                    raise _Stale from exc
                raise ConnectionResetError("the server closed the connection mid-answer") from exc
            except asyncio.LimitOverrunError as exc:
                raise BadResponse("response head too large") from exc
            first_on_reused = False
            status, length, chunked, close = _parse_head(head)
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue and friends: the real answer follows
            break
        try:
            if chunked:
                await _skip_chunked(reader)
            elif length is not None:
                if length:
                    await reader.readexactly(length)
            else:
                # No framing: the body ends with the connection.
                await reader.read()
                close = True
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("the server closed the connection mid-body") from exc
        except (asyncio.LimitOverrunError, ValueError) as exc:
            raise BadResponse(f"malformed response body: {exc}") from exc
        return status, not close

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()


class _Stale(Exception):
    """A reused connection was closed before any byte of the answer arrived."""


def _parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """(status, content-length, chunked, connection-close) from a response head.

    Runs once per POST, so it looks up the three headers that matter with `find` on the
    lower-cased head instead of splitting every line."""
    if head[:7] != b"HTTP/1." or head[8:9] != b" " or not head[9:12].isdigit():
        raise BadResponse(f"malformed status line: {_first_line(head)!r}")
    status = int(head[9:12])
    if head[12:13] not in (b" ", b"\r"):
        raise BadResponse(f"malformed status line: {_first_line(head)!r}")
    lower = head.lower()
    close = head[7:8] == b"0"  # HTTP/1.0: closes unless it says keep-alive
    connection = _header(lower, b"connection")
    if connection is not None:
        tokens = {t.strip() for t in connection.split(b",")}
        if b"close" in tokens:
            close = True
        elif b"keep-alive" in tokens:
            close = False
    if status in (204, 304) or status < 200:
        return status, 0, False, close
    encoding = _header(lower, b"transfer-encoding")
    if encoding is not None:
        if encoding.split(b",")[-1].strip() != b"chunked":
            raise BadResponse(f"unsupported Transfer-Encoding: {encoding[:40]!r}")
        return status, None, True, close
    value = _header(lower, b"content-length")
    if value is None:
        return status, None, False, close
    if not value.isdigit():
        raise BadResponse(f"bad Content-Length: {value[:40]!r}")
    return status, int(value), False, close


def _first_line(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0][:80]


def _header(lower_head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lower case) in a lower-cased head; a header given twice
    with different values is refused (a response that could be framed two ways)."""
    key = b"\r\n" + name + b":"
    at = lower_head.find(key)
    if at < 0:
        return None
    start = at + len(key)
    value = lower_head[start : lower_head.find(b"\r\n", start)].strip()
    again = lower_head.find(key, start)
    if again >= 0:
        other = lower_head[again + len(key) : lower_head.find(b"\r\n", again + len(key))]
        if other.strip() != value:
            raise BadResponse(f"conflicting {name.decode()} headers")
    return value


async def _skip_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)  # ValueError: malformed
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return
        await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
