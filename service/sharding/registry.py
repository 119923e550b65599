"""What the replicas share in Redis for sharding: who is alive, who holds which shard, and
which shard each conversation's requests go to. Keys are prefixed with QUEUE_NAME.

    <QUEUE_NAME>:replicas            sorted set: replica id → lease expiry (Redis clock, ms)
    <QUEUE_NAME>:shard:<k>           the replica consuming shard k (a lease, PX ttl)
    <QUEUE_NAME>:router              the replica consuming QUEUE_NAME (a lease, PX ttl)
    <QUEUE_NAME>:conversation:<id>   the shard of a conversation (refreshed on each request)

Every lease is an ordinary Redis key with a time to live, renewed by its holder: a replica
that dies stops renewing, and its leases end `ttl` later. Each operation is one Lua script,
so a renewal never races a take-over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from redis.asyncio import Redis

# ZADD me at now+ttl, drop the expired, return the live members.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 20)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# For each shard key: take it when free and wanted, renew it when held (wanted or not: a shard
# is given up only by an explicit release, once its consumer is stopped). Returns 1/0 per key.
_LEASES = """
local held = {}
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  held[i] = 0
  if current == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    held[i] = 1
  elseif (not current) and ARGV[2 + i] == '1' then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    held[i] = 1
  end
end
return held
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# The conversation's shard if it has one (its time to live renewed), else the proposed one.
_SHARD_OF = """
local current = redis.call('GET', KEYS[1])
if current then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {current, 0}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {ARGV[1], 1}
"""


class ShardRegistry:
    """Replica membership, shard leases and conversation → shard, in one Redis."""

    def __init__(self, redis: Redis, prefix: str, *, shards: int, ttl: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.shards = shards
        self.ttl_ms = max(100, int(ttl * 1000))
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._leases = redis.register_script(_LEASES)
        self._release = redis.register_script(_RELEASE)
        self._shard_of = redis.register_script(_SHARD_OF)

    @property
    def members_key(self) -> str:
        return f"{self.prefix}:replicas"

    def shard_key(self, shard: int) -> str:
        return f"{self.prefix}:shard:{shard}"

    def conversation_key(self, conversation_id: str) -> str:
        return f"{self.prefix}:conversation:{conversation_id}"

    async def heartbeat(self, member: str, *, alive: bool = True) -> list[str]:
        """Renew (or, `alive=False`, end) this member's lease; returns the live members."""
        result = await self._heartbeat(
            keys=[self.members_key], args=[member, self.ttl_ms, "1" if alive else "0"]
        )
        return [_text(m) for m in cast("Sequence[Any]", result)]

    @property
    def router_key(self) -> str:
        return f"{self.prefix}:router"

    async def hold(
        self, member: str, wanted: frozenset[int], *, route: bool = False
    ) -> tuple[frozenset[int], bool]:
        """Take the wanted shards (and, `route`, the router role) when free, and renew every
        lease this member holds. Returns the shards held and whether it holds the router."""
        keys = [self.shard_key(k) for k in range(self.shards)] + [self.router_key]
        args: list[Any] = [member, self.ttl_ms]
        args += ["1" if k in wanted else "0" for k in range(self.shards)]
        args.append("1" if route else "0")
        result = [int(x) for x in cast("Sequence[Any]", await self._leases(keys=keys, args=args))]
        return frozenset(k for k, held in enumerate(result[:-1]) if held), bool(result[-1])

    async def release_router(self, member: str) -> None:
        await self._release(keys=[self.router_key], args=[member])

    async def release(self, member: str, shard: int) -> None:
        await self._release(keys=[self.shard_key(shard)], args=[member])

    async def holders(self) -> dict[int, str]:
        """Shard → holder, for shards that have one (diagnostics and tests)."""
        values = await self.redis.mget([self.shard_key(k) for k in range(self.shards)])
        return {k: _text(v) for k, v in enumerate(values) if v is not None}

    async def shard_of(self, conversation_id: str, proposed: int, ttl: int) -> tuple[int, bool]:
        """The conversation's shard: the one it has while it has requests around, else
        `proposed` (kept `ttl` seconds after its last request); and whether it was new."""
        result = cast(
            "Sequence[Any]",
            await self._shard_of(
                keys=[self.conversation_key(conversation_id)], args=[proposed, ttl]
            ),
        )
        shard, new = int(_text(result[0])), bool(int(result[1]))
        return (shard if 0 <= shard < self.shards else proposed % self.shards), new


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
