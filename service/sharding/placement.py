"""Which replica consumes which shard: pure functions, the same answer on every replica.

Shards are spread over the live replicas by rendezvous (highest-random-weight) hashing with a
capacity: each replica takes `S // N` or `S // N + 1` of the `S` shards, and a change of the
replica set moves few shards (only those whose owner left, plus the ones needed to rebalance).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _weight(member: str, shard: int) -> int:
    digest = hashlib.blake2b(f"{member}/{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign_shards(members: Iterable[str], shards: int) -> dict[int, str]:
    """Shard → owner, balanced: every member owns `shards // n` or one more."""
    ordered = sorted(set(members))
    if not ordered or shards <= 0:
        return {}
    base, extra = divmod(shards, len(ordered))
    load = dict.fromkeys(ordered, 0)
    extra_used = 0
    owners: dict[int, str] = {}
    pairs = sorted(((_weight(m, k), k, m) for k in range(shards) for m in ordered), reverse=True)
    for _, shard, member in pairs:
        if shard in owners:
            continue
        if load[member] < base:
            pass
        elif load[member] == base and extra_used < extra:
            extra_used += 1
        else:
            continue
        owners[shard] = member
        load[member] += 1
    return owners


def owned_by(member: str, members: Iterable[str], shards: int) -> frozenset[int]:
    return frozenset(k for k, m in assign_shards(members, shards).items() if m == member)


def shard_queue(queue_name: str, shard: int) -> str:
    """`<QUEUE_NAME>.shard.<k>`."""
    return f"{queue_name}.shard.{shard}"
