"""The coordinator shared through Redis (REDIS_URL): every replica of one QUEUE_NAME uses it.

Keys (all prefixed with `<prefix>` = QUEUE_NAME; the service never flushes the database):

    <prefix>:owner:<owner>     "1", expires after LEASE_TTL; renewed every LEASE_TTL/3 s by
                               the live process `<owner>`. Gone = that process is dead.
    <prefix>:run:<message_id>  hash {owner, starts, finished, final}: who runs the request,
                               how many starts did not finish, whether it finished, and the
                               final event while it is still unpublished. Expires
                               RUN_RECORD_TTL s after its last change.
    <prefix>:line:<conversation>  sorted set of "<owner>|<ticket>", scored by arrival: the
                               conversation's line; the head runs. Places of dead owners are
                               dropped when met. Expires RUN_RECORD_TTL s after its last join.
    <prefix>:line-seq          counter giving each place its score.
    <prefix>:cancelled:<message_id>  "1": a cancel tombstone, expires after
                               CANCEL_TOMBSTONE_TTL (see service.coordination).

Every read-modify-write is one Lua script, so replicas never interleave inside one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.coordination import CANCEL_TOMBSTONE_TTL, Claim

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger("service.coordination")

_CLAIM = """
local r = redis.call('HMGET', KEYS[1], 'owner', 'starts', 'finished', 'final')
local owner, starts, finished, final = r[1], tonumber(r[2]) or 0, r[3] == '1', r[4]
if finished and ARGV[3] == '1' then
  if final then return {'finished', 0, final} end
  return {'finished', 0}
end
if (not finished) and owner and owner ~= '' and redis.call('EXISTS', ARGV[1] .. owner) == 1 then
  return {'running', starts}
end
if finished or ARGV[3] ~= '1' then starts = 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'starts', starts, 'finished', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'claimed', starts}
"""

_START = """
if redis.call('HGET', KEYS[1], 'finished') == '1' then redis.call('DEL', KEYS[1]) end
local n = redis.call('HINCRBY', KEYS[1], 'starts', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'finished', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"""

_FINISH = """
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'owner', '', 'starts', 0, 'finished', '1', 'final', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'owner', '', 'starts', 0, 'finished', '1')
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

_RELEASE = """
local r = redis.call('HMGET', KEYS[1], 'owner', 'finished')
if r[1] == ARGV[1] and r[2] ~= '1' then redis.call('HSET', KEYS[1], 'owner', '') end
return 1
"""

_RUNNING = """
local r = redis.call('HMGET', KEYS[1], 'owner', 'finished')
if r[1] and r[1] ~= '' and r[2] ~= '1' then return redis.call('EXISTS', ARGV[1] .. r[1]) end
return 0
"""

_JOIN = """
local score = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return score
"""

# 1: the place heads the line; 0: it waits; -1: it is not in the line.
_HEAD = """
while true do
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #head == 0 then return -1 end
  local place = head[1]
  local owner = string.match(place, '^([^|]*)|')
  if owner and redis.call('EXISTS', ARGV[1] .. owner) == 1 then
    if place == ARGV[2] then return 1 end
    if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
    return -1
  end
  redis.call('ZREM', KEYS[1], place)
end
"""

_BUSY = """
local places = redis.call('ZRANGE', KEYS[1], 0, -1)
local alive = 0
for _, place in ipairs(places) do
  local owner = string.match(place, '^([^|]*)|')
  if owner and redis.call('EXISTS', ARGV[1] .. owner) == 1 then
    alive = alive + 1
  else
    redis.call('ZREM', KEYS[1], place)
  end
end
return alive
"""


class RedisCoordinator:
    """Run records and conversation turns in Redis; see the module docstring for the keys."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        lease_ttl: float = 5.0,
        record_ttl: float = 3600.0,
        poll_interval: float = 0.05,
        owner: str | None = None,
    ) -> None:
        self._redis = client
        self.prefix = prefix
        self.owner = owner or uuid.uuid4().hex
        self._lease_ms = max(int(lease_ttl * 1000), 100)
        self._record_ms = max(int(record_ttl * 1000), self._lease_ms)
        self._poll = poll_interval
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._wakeups: dict[str, asyncio.Event] = {}
        self._scripts = {
            name: client.register_script(source)
            for name, source in {
                "claim": _CLAIM,
                "start": _START,
                "finish": _FINISH,
                "release": _RELEASE,
                "running": _RUNNING,
                "join": _JOIN,
                "head": _HEAD,
                "busy": _BUSY,
            }.items()
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisCoordinator:
        client = Redis.from_url(settings.redis_url.get_secret_value())
        return cls(
            client,
            prefix=settings.queue_name,
            lease_ttl=settings.lease_ttl,
            record_ttl=settings.run_record_ttl,
        )

    # -- keys --------------------------------------------------------------------------------

    def _owner_key(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}"

    @property
    def _owners(self) -> str:
        return f"{self.prefix}:owner:"

    def _run_key(self, message_id: str) -> str:
        return f"{self.prefix}:run:{message_id}"

    def _line_key(self, conversation_id: str) -> str:
        return f"{self.prefix}:line:{conversation_id}"

    def _place(self, ticket: str) -> str:
        return f"{self.owner}|{ticket}"

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._scripts[name](keys=keys, args=args)

    # -- the lease ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self._redis.set(self._owner_key(self.owner), "1", px=self._lease_ms)
        self._heartbeat = asyncio.create_task(self._keep_alive(), name="coordination-lease")

    async def _keep_alive(self) -> None:
        # Stopped by an event, never cancelled mid-command (a redis-py connection cancelled
        # inside a command is left in a state that can hang its pool's close).
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._lease_ms / 3000):
                    await self._stopped.wait()
            if self._stopped.is_set():
                return
            try:
                await self._redis.set(self._owner_key(self.owner), "1", px=self._lease_ms)
            except (RedisError, OSError) as exc:
                log.warning("could not renew the coordination lease: %s", type(exc).__name__)

    async def close(self) -> None:
        self._stopped.set()
        if self._heartbeat is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._heartbeat, timeout=5)
            self._heartbeat = None
        with contextlib.suppress(TimeoutError, RedisError, OSError):
            await asyncio.wait_for(self._redis.aclose(), timeout=5)

    # -- run records -------------------------------------------------------------------------

    async def claim_run(self, message_id: str, *, redelivered: bool) -> Claim:
        result = await self._call(
            "claim",
            [self._run_key(message_id)],
            [self._owners, self.owner, "1" if redelivered else "0", self._record_ms],
        )
        status = _text(result[0])
        if status == "finished":
            return Claim("finished", final=bytes(result[2]) if len(result) > 2 else None)
        if status == "running":
            return Claim("running", starts=int(result[1]))
        return Claim("claimed", starts=int(result[1]))

    async def record_start(self, message_id: str) -> int:
        count = await self._call(
            "start", [self._run_key(message_id)], [self.owner, self._record_ms]
        )
        return int(count)

    async def finish_run(self, message_id: str, final: bytes | None) -> None:
        await self._call("finish", [self._run_key(message_id)], [self._record_ms, final or b""])

    async def final_published(self, message_id: str) -> None:
        await self._redis.hdel(self._run_key(message_id), "final")

    async def release_run(self, message_id: str) -> None:
        await self._call("release", [self._run_key(message_id)], [self.owner])

    async def running(self, message_id: str) -> bool:
        return bool(await self._call("running", [self._run_key(message_id)], [self._owners]))

    # -- conversation turns ------------------------------------------------------------------

    async def join_turn(self, conversation_id: str, ticket: str) -> None:
        await self._call(
            "join",
            [self._line_key(conversation_id), f"{self.prefix}:line-seq"],
            [self._place(ticket), self._record_ms],
        )

    def heads_line(self, conversation_id: str, ticket: str) -> bool:
        return False  # known only to the store: `wait_turn` asks it

    async def wait_turn(self, conversation_id: str, ticket: str) -> None:
        # Polled (the line's head may die without telling anyone); a place left by this
        # process wakes its own waiters at once.
        delay = self._poll
        while True:
            head = await self._call(
                "head", [self._line_key(conversation_id)], [self._owners, self._place(ticket)]
            )
            if head == 1:
                return
            if head == -1:
                raise LookupError(f"{ticket} is not in the line of {conversation_id}")
            wakeup = self._wakeups.setdefault(conversation_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wakeup.wait()
            delay = min(delay * 1.5, 0.5)

    async def leave_turn(self, conversation_id: str, ticket: str) -> None:
        await self._redis.zrem(self._line_key(conversation_id), self._place(ticket))
        wakeup = self._wakeups.pop(conversation_id, None)
        if wakeup is not None:
            wakeup.set()

    async def busy(self, conversation_id: str) -> bool:
        return bool(await self._call("busy", [self._line_key(conversation_id)], [self._owners]))

    # -- cancel tombstones -------------------------------------------------------------------

    def _tombstone_key(self, message_id: str) -> str:
        return f"{self.prefix}:cancelled:{message_id}"

    async def mark_cancelled(self, message_id: str) -> None:
        await self._redis.set(
            self._tombstone_key(message_id), "1", px=int(CANCEL_TOMBSTONE_TTL * 1000)
        )

    async def was_cancelled(self, message_id: str) -> bool:
        return bool(await self._redis.exists(self._tombstone_key(message_id)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
