"""Replica mode (REDIS_URL set): one router, shard queues, shards spread over the live replicas.

    upstream ─► QUEUE_NAME ─(one router: exclusive consumer)─► <QUEUE_NAME>.shard.<k>
                                                               (single active consumer)
                                                                       │
                              the replica holding shard k's lease ◄────┘ ─► delivery path

* **Router.** The replica holding the Redis router lease consumes QUEUE_NAME (also as an AMQP
  *exclusive* consumer: on a classic queue the broker refuses a second one; measured, a
  RabbitMQ 3.10 quorum queue accepts several, hence the lease). The others retry every tick;
  a router that dies loses the lease after LEASE_TTL. The router validates each
  request (invalid ones are dead-lettered from QUEUE_NAME as in version 1), looks up the
  conversation's shard in Redis (a new conversation gets the next shard, round robin), and
  republishes the request persistently to that shard, with publisher confirms, one at a time
  in the order QUEUE_NAME delivered them; only then does it ack the QUEUE_NAME copy.
* **Shards.** `REPLICA_SHARDS` durable queues with `x-single-active-consumer`. Each replica
  heartbeats into a Redis set of live replicas; the shards are assigned over that set (balanced
  rendezvous hashing, `placement.py`) and a replica consumes a shard only while it holds the
  shard's Redis lease. A shard changes hands only after its former holder has stopped its
  consumer (cancel-ok received) and released the lease, or after the lease expired (the holder
  died or lost Redis). Single-active-consumer is the broker-side guard behind the lease.
* **Order** per conversation follows: one router keeps QUEUE_NAME's order into one shard, one
  consumer at a time takes from the shard in order, and the delivery path (service/delivery,
  with the shared coordinator) runs a conversation's requests one at a time in arrival order.

The connection is this module's own (`assistant-service <QUEUE_NAME> <replica id> replicas`) and is
re-opened through the same RABBITMQ_URL whenever it drops: consumers are set up again by this
code, not by the client library's recovery (see README "Running replicas").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from service.config import Settings
from service.sharding.placement import owned_by, shard_queue
from service.sharding.registry import ShardRegistry
from service.topology import request_queue_arguments, shard_queue_arguments

if TYPE_CHECKING:
    # Imported when replicas start: redis-py pulls in OpenTelemetry, which a single process
    # (tracing off) must not load.
    from redis.asyncio import Redis

log = logging.getLogger("service.replicas")

REDELIVERED_HEADER = "x-service-redelivered"
"""Set by the router on a shard copy of a QUEUE_NAME delivery the broker marked redelivered, so
that the shard consumer treats it as a redelivered copy (never as a fresh publish)."""

CONVERSATION_SHARD_TTL = 7200
"""Seconds a conversation keeps its shard after its last request: longer than a request can
wait (x-message-ttl, 1 h) plus RUN_TIMEOUT, so no request of it is still around elsewhere."""

OUTAGE_LIMIT = 15.0
"""Seconds without a broker connection after which a replica gives its shards up."""

Deliver = Callable[[AbstractIncomingMessage], Awaitable[None]]
"""Takes a shard delivery (a valid request) to its end: run, final event, ack."""

Validate = Callable[[AbstractIncomingMessage], Awaitable[tuple[str, str] | None]]
"""The router's gate: (message_id, conversation id) of a valid request; None when the message
was invalid and has been dealt with (failed event, hub error payload, dead-lettered)."""


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class _ShardConsumer:
    shard: int
    channel: AbstractChannel
    queue: AbstractQueue
    tag: str


class ReplicaSet:
    """The router and the shard consumers of one replica; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        deliver: Deliver,
        validate: Validate,
        redis: Redis | None = None,
        member: str | None = None,
        waiting: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.member = member or replica_id()
        self.connection_name = f"assistant-service {settings.queue_name} {self.member} replicas"
        self._deliver = deliver
        self._validate = validate
        self._waiting = waiting
        if redis is None:
            from redis.asyncio import Redis

        self._redis = redis or Redis.from_url(
            settings.redis_url.get_secret_value(), socket_timeout=5, socket_connect_timeout=5
        )
        self.registry = ShardRegistry(
            self._redis,
            settings.queue_name,
            shards=settings.replica_shards,
            ttl=settings.lease_ttl,
        )
        self.tick = max(0.1, settings.lease_ttl / 3)
        self.members: list[str] = []
        self.held: frozenset[int] = frozenset()
        self.wanted: frozenset[int] = frozenset()
        self.consumers: dict[int, _ShardConsumer] = {}
        self.routing = False
        self.router_held = False
        self.routed = 0
        self._taking = True
        self._closing = False
        self._connection: AbstractConnection | None = None
        self._connected_at: float | None = None
        self._disconnected_at = time.monotonic()
        self._renewed_at = 0.0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._router_channel: AbstractChannel | None = None
        self._next_shard = random.randrange(settings.replica_shards)
        self._started = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the replica set and start consuming; returns once the broker is reached."""
        await self._heartbeat()
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="replicas-heartbeat"),
            asyncio.create_task(self._supervise(), name="replicas-connection"),
        ]
        async with asyncio.timeout(60):
            await self._started.wait()
        log.info(
            "replica %s: %d shard(s) over %d live replica(s)",
            self.member,
            self.settings.replica_shards,
            len(self.members),
        )

    def converged(self) -> bool:
        """Connected, and consuming every shard assigned to this replica (readiness)."""
        return (
            self._connection is not None
            and not self._connection.is_closed
            and set(self.consumers) == set(self.wanted)
            # A replica beyond REPLICA_SHARDS has no shard: a ready standby.
            and (bool(self.wanted) or len(self.members) > self.registry.shards)
        )

    async def stop_taking(self) -> None:
        """SIGTERM: stop routing and cancel every shard consumer (cancel-ok received).

        The delivery path then returns the requests that have not started (a nack keeps their
        place); once none is left waiting, the shards are released in the background, so other
        replicas take them while this one's running requests finish (they hold their
        conversations' turns in the shared line, so order holds).
        """
        self._taking = False
        await self._stop_router()
        for consumer in list(self.consumers.values()):
            with contextlib.suppress(Exception):
                await consumer.queue.cancel(consumer.tag)
        self._tasks.append(asyncio.create_task(self._release_when_returned()))

    async def _release_when_returned(self) -> None:
        deadline = time.monotonic() + 30
        await asyncio.sleep(0)
        while self._waiting() and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the delivery layer
            await asyncio.sleep(0.05)
        await self._leave()

    async def _leave(self) -> None:
        with contextlib.suppress(Exception):
            await self.registry.heartbeat(self.member, alive=False)
            for shard in range(self.registry.shards):
                await self.registry.release(self.member, shard)
            await self.registry.release_router(self.member)
            self.held = frozenset()
            self.router_held = False
        log.info("replicas: %s left; its shards are free", self.member)

    async def close(self) -> None:
        """Release the shards, leave the replica set, close the connection and Redis."""
        self._taking = False
        self._closing = True
        self._changed.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for shard in list(self.consumers):
            await self._stop_consumer(shard)
        await self._leave()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    # -- membership and shard leases -------------------------------------------------------

    async def _heartbeats(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.tick)
            try:
                await self._heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("replicas: Redis heartbeat failed (%s)", type(exc).__name__)
                if time.monotonic() - self._renewed_at > self.registry.ttl_ms / 1000 * 0.8:
                    # Our leases may have expired: another replica may hold our shards now.
                    if self.held:
                        log.warning("replicas: leases not renewed in time; stopping shards")
                    self.held = frozenset()
                    self.router_held = False
                    self._changed.set()

    async def _heartbeat(self) -> None:
        offline = (
            self._connected_at is None and time.monotonic() - self._disconnected_at > OUTAGE_LIMIT
        )
        present = self._taking and not self._closing and not offline
        members = await self.registry.heartbeat(self.member, alive=present)
        if offline and (self.held or self.router_held):
            # No broker for a while: give the shards up so that connected replicas take them.
            log.warning("replicas: broker unreachable for %gs; giving shards up", OUTAGE_LIMIT)
            await self._leave()
        wanted = owned_by(self.member, members, self.registry.shards) if present else frozenset()
        held, router = await self.registry.hold(self.member, wanted, route=present)
        self._renewed_at = time.monotonic()
        if router != self.router_held:
            self.router_held = router
            self._changed.set()
        if members != self.members:
            log.info("replicas: live %s", ", ".join(members) or "(none)")
        changed = (members, wanted, held) != (self.members, self.wanted, self.held)
        self.members, self.wanted, self.held = members, wanted, held
        if changed:
            self._changed.set()

    # -- the connection --------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = 0.2
        url = self.settings.rabbitmq_url.get_secret_value()
        while not self._closing:
            try:
                connection = await aio_pika.connect(
                    url,
                    client_properties={"connection_name": self.connection_name},
                    timeout=10,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("replicas: broker unreachable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            self._connection = connection
            closed = asyncio.Event()
            connection.close_callbacks.add(lambda *_, event=closed: event.set())
            if connection.is_closed:
                closed.set()
            # The work on this connection stops the moment it closes, even if a call on it
            # never returns (seen: an RPC in flight when the broker closed the connection).
            work = asyncio.create_task(self._use(connection, closed))
            gone = asyncio.create_task(closed.wait())
            try:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await work
                elif not work.cancelled() and work.exception() is not None:
                    error = work.exception()
                    log.warning("replicas: connection lost (%s: %s)", type(error).__name__, error)
            except asyncio.CancelledError:
                work.cancel()
                raise
            finally:
                gone.cancel()
                self._connected_at = None
                self._disconnected_at = time.monotonic()
                self.consumers.clear()
                self.routing = False
                self._router_channel = None
                self._connection = None
                with contextlib.suppress(Exception):
                    await connection.close()
            if not self._closing:
                log.warning("replicas: broker connection closed; reconnecting")

    async def _use(self, connection: AbstractConnection, closed: asyncio.Event) -> None:
        async with asyncio.timeout(60):
            await self._declare(connection)
        self._connected_at = time.monotonic()
        self._started.set()
        log.info("replicas: connected")
        await self._serve(closed)

    async def _declare(self, connection: AbstractConnection) -> None:
        s = self.settings
        channel = await connection.channel()
        try:
            exchange = await channel.declare_exchange(
                s.exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
            )
            ingress = await channel.declare_queue(
                s.queue_name, durable=True, arguments=request_queue_arguments(s)
            )
            await ingress.bind(exchange, routing_key=s.routing_key)
            for shard in range(s.replica_shards):
                await channel.declare_queue(
                    shard_queue(s.queue_name, shard),
                    durable=True,
                    arguments=shard_queue_arguments(s),
                )
        finally:
            await channel.close()

    async def _serve(self, closed: asyncio.Event) -> None:
        while not self._closing and not closed.is_set():
            self._changed.clear()
            async with asyncio.timeout(60):
                await self._converge()
            if self.routing and not (self._taking and self.router_held):
                await self._stop_router()
            if self._taking and self.router_held and not self.routing:
                await self._try_route()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick):
                    await self._changed.wait()

    async def _converge(self) -> None:
        """Consume exactly the shards this replica is assigned and holds."""
        if not self._taking:
            return  # shutting down: the delivery path settles what the consumers received
        target = self.held & self.wanted if self._taking else frozenset()
        for shard in sorted(set(self.consumers) - target):
            await self._stop_consumer(shard)
            with contextlib.suppress(Exception):
                await self.registry.release(self.member, shard)
            log.info("replicas: shard %d handed over", shard)
        for shard in sorted(target - set(self.consumers)):
            await self._start_consumer(shard)

    # -- shard consumers -------------------------------------------------------------------

    async def _start_consumer(self, shard: int) -> None:
        assert self._connection is not None
        channel = await self._connection.channel()
        share = max(1, len(self.wanted))
        await channel.set_qos(
            prefetch_count=max(1, math.ceil(self.settings.max_concurrency / share))
        )
        queue = await channel.get_queue(shard_queue(self.settings.queue_name, shard), ensure=False)
        consumer = _ShardConsumer(shard, channel, queue, tag="")

        consumer.tag = await queue.consume(self._deliver)
        self.consumers[shard] = consumer
        log.info("replicas: consuming shard %d", shard)

    async def _stop_consumer(self, shard: int) -> None:
        """Hand a shard over: close its channel, so the broker puts every request this replica
        holds from it back in place, in order (running ones included), before the lease goes.

        The next holder then receives them first: a request still running here is a copy
        whose run a live process holds (the coordinator's run record), so it waits for that
        run and is acked without running; the others run there in order, after this
        replica's runs leave the conversation's shared line. It is the path of a lost
        connection, taken on purpose."""
        consumer = self.consumers.pop(shard, None)
        if consumer is None:
            return
        with contextlib.suppress(Exception):
            await consumer.channel.close()

    # -- the router ------------------------------------------------------------------------

    async def _try_route(self) -> None:
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.set_qos(prefetch_count=256)
        ingress = await channel.get_queue(self.settings.queue_name, ensure=False)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            inbox.put_nowait(message)

        try:
            await ingress.consume(on_message, exclusive=True)
        except Exception:
            # Another replica routes (ACCESS_REFUSED closes the channel): try again later.
            with contextlib.suppress(Exception):
                await channel.close()
            return
        self.routing = True
        self._router_channel = channel
        log.info(
            "replicas: routing %s to %d shards", self.settings.queue_name, self.registry.shards
        )
        task = asyncio.create_task(self._route(channel, inbox), name="replicas-router")
        self._tasks.append(task)
        task.add_done_callback(lambda _: self._router_done(channel))

    def _router_done(self, channel: AbstractChannel) -> None:
        if self._router_channel is channel:
            self.routing = False
            self._router_channel = None
            self._changed.set()

    async def _stop_router(self) -> None:
        channel, self._router_channel = self._router_channel, None
        self.routing = False
        if channel is not None:
            with contextlib.suppress(Exception):
                # Unacked QUEUE_NAME copies go back to the queue, in place, for the next router.
                await channel.close()

    async def _route(
        self, channel: AbstractChannel, inbox: asyncio.Queue[AbstractIncomingMessage]
    ) -> None:
        exchange = channel.default_exchange
        while not channel.is_closed:
            try:
                async with asyncio.timeout(1.0):
                    message = await inbox.get()
            except TimeoutError:
                continue
            try:
                await self._route_one(exchange, message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Not acked: the broker gives it back when the channel closes (to the next router).
                log.warning("router: could not route a request (%s: %s)", type(exc).__name__, exc)
                with contextlib.suppress(Exception):
                    await channel.close()
                return

    async def _route_one(
        self, exchange: aio_pika.abc.AbstractExchange, message: AbstractIncomingMessage
    ) -> None:
        identity = await self._validate(message)
        if identity is None:
            return  # invalid: dead-lettered by the gate
        _message_id, conversation = identity
        # A new conversation takes the next shard in turn: shards fill evenly.
        proposed = self._next_shard % self.registry.shards
        shard, new = await self.registry.shard_of(conversation, proposed, CONVERSATION_SHARD_TTL)
        if new:
            self._next_shard += 1
        headers: dict[str, Any] = dict(message.headers or {})
        if message.redelivered:
            headers[REDELIVERED_HEADER] = True
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=message.priority,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            message_id=message.message_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
        )
        # Waits for the broker's confirm: the shard holds the copy before the ingress copy goes.
        await exchange.publish(
            copy, routing_key=shard_queue(self.settings.queue_name, shard), mandatory=True
        )
        await message.ack()
        self.routed += 1


def is_redelivered(message: AbstractIncomingMessage) -> bool:
    """A shard delivery is a redelivered copy when the broker or the router says so."""
    return bool(message.redelivered) or bool((message.headers or {}).get(REDELIVERED_HEADER))


def mark_redelivered(message: AbstractIncomingMessage) -> None:
    """Let the delivery path see a router-forwarded redelivery as the broker would show it."""
    setattr(message, "redelivered", True)  # noqa: B010 - a public attribute, set by aio-pika
