"""The hub client's buffer (issue 9 item 6): bounded in bytes, per-channel bookkeeping that
goes away, a writer that survives anything, a refused token reported at once."""

from __future__ import annotations

import logging

import pytest

from service.sinks.hub import EnvelopeHub
from service.sinks.hub.base import FRAME_OVERHEAD, Lane
from tests.fakes.hub import RecordingHub

DOWN = "ws://127.0.0.1:9"  # nothing listens on the discard port


async def test_outage_with_200_long_answers_stays_under_the_byte_bound() -> None:
    bound = 2 * 2**20
    client = EnvelopeHub(DOWN, buffer_bytes=bound, reconnect_min=5, reconnect_max=5)
    await client.start()
    # 200 answers of 4,000 tokens (~20,000 characters) in compact mode: ~200 payloads each.
    for answer in range(200):
        channel = f"conv_{answer}"
        client.subscribe(channel)
        for seq in range(200):
            client.send(channel, {"seq": seq, "delta": "word " * 20, "message": ""})
            assert client.buffered_bytes <= bound
        client.unsubscribe(channel)
    assert client.peak_bytes <= bound
    assert client.dropped_frames > 0
    # Every answer whose frames were dropped says so; none waits for the timeout to say it.
    assert await client.drain("conv_0", timeout=0.01) is False
    assert client.tracked_channels <= 200
    await client.close(flush_timeout=0)


async def test_a_frame_larger_than_the_bound_is_dropped_alone() -> None:
    client = EnvelopeHub(DOWN, buffer_bytes=65536, reconnect_min=5, reconnect_max=5)
    client.subscribe("small")
    client.send("small", {"delta": "x"})
    client.subscribe("huge")
    client.send("huge", {"message": "y" * 100_000})
    assert client.buffered_bytes < 65536
    assert await client.drain("huge", timeout=0.01) is False
    assert client.queue_depth == 3  # two subscribe frames and the small payload


async def test_bookkeeping_is_gone_once_channels_finish_delivered_or_not() -> None:
    server = RecordingHub()
    await server.start()
    client = EnvelopeHub(server.uri, reconnect_min=0.05, reconnect_max=0.1)
    await client.start(connect_timeout=5)
    for i in range(50):
        channel = f"done_{i}"
        client.subscribe(channel)
        client.send(channel, {"seq": 0})
        client.unsubscribe(channel)
        assert await client.drain(channel, timeout=5)
    # An invalid request's error payload: subscribe, send, unsubscribe, nobody drains.
    client.subscribe("dead_letter")
    client.send("dead_letter", {"seq": 0})
    client.unsubscribe("dead_letter")
    await server.wait_for(lambda: len(server.payloads("dead_letter")) == 1, 5)
    assert client.tracked_channels == 0
    assert not client._finished_lossy
    await client.close()
    await server.stop()


async def test_undelivered_channels_leave_only_a_bounded_name_list() -> None:
    client = EnvelopeHub(DOWN, buffer_size=16, reconnect_min=5, reconnect_max=5)
    for i in range(5000):
        channel = f"lost_{i}"
        client.subscribe(channel)
        for _ in range(4):
            client.send(channel, {"seq": 0})
        client.unsubscribe(channel)
    assert client.queue_depth <= 16
    assert client.tracked_channels <= 16
    assert len(client._finished_lossy) <= 4096
    assert await client.drain("lost_4000", timeout=0.01) is False


class FlakyHub(EnvelopeHub):
    """Its writer hits an exception type nobody expects, once."""

    failures = 1

    async def serve_lane(self, lane: Lane) -> None:
        if self.failures:
            self.failures -= 1
            raise KeyError("a bug in the writer")
        await super().serve_lane(lane)


async def test_writer_survives_an_unexpected_exception_and_delivers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = RecordingHub()
    await server.start()
    client = FlakyHub(server.uri, reconnect_min=0.05, reconnect_max=0.1)
    await client.start()
    client.subscribe("c1")
    for seq in range(5):
        client.send("c1", {"seq": seq})
    assert await client.drain("c1", timeout=5)
    await server.wait_for(lambda: len(server.payloads("c1")) == 5, 5)
    assert [p["seq"] for p in server.payloads("c1")] == list(range(5))
    assert "failed unexpectedly" in caplog.text
    await client.close()
    await server.stop()


async def test_refused_token_is_logged_clearly_and_reported_without_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "service.hub")
    server = RecordingHub(require_token="right")
    await server.start()
    client = EnvelopeHub(server.uri, token="wrong", reconnect_min=0.05, reconnect_max=0.1)
    await client.start()
    client.subscribe("c1")
    client.send("c1", {"seq": 0})
    client.unsubscribe("c1")
    assert await client.drain("c1", timeout=5) is False
    assert "refused the publisher" in caplog.text and "WEBSOCKET_TOKEN" in caplog.text
    assert "wrong" not in caplog.text
    await client.close(flush_timeout=0)
    await server.stop()


def test_frame_accounting_counts_utf8_bytes() -> None:
    client = EnvelopeHub(DOWN)
    client.subscribe("c")
    before = client.buffered_bytes
    client.send("c", {"delta": "😀" * 10})
    frame = '{"channel":"c","payload":{"delta":"' + "😀" * 10 + '"}}'
    assert client.buffered_bytes - before == len(frame.encode()) + FRAME_OVERHEAD


class PoisonHub(EnvelopeHub):
    """A hub that drops the connection whenever it is handed one particular frame."""

    async def serve_lane(self, lane: Lane) -> None:
        head = lane.frames[0][1] if lane.frames else b""
        if b"poison" in head:
            self.connection_opened(lane)
            raise ConnectionError("the hub went down on this frame")
        await super().serve_lane(lane)


async def test_a_frame_that_keeps_killing_the_connection_is_dropped_and_the_rest_delivered() -> (
    None
):
    server = RecordingHub()
    await server.start()
    client = PoisonHub(server.uri, reconnect_min=0.01, reconnect_max=0.02)
    client.send("c1", {"seq": 0, "delta": "poison"})
    client.send("c1", {"seq": 1})
    await client.start()
    assert await client.drain("c1", timeout=5) is False  # one frame lost: said so
    await server.wait_for(lambda: len(server.payloads("c1")) == 1, 5)
    assert server.payloads("c1") == [{"seq": 1}]
    assert client.dropped_frames == 1
    await client.close()
    await server.stop()


def test_pooled_masking_keys_are_fresh_per_frame_and_read_in_blocks() -> None:
    import websockets.frames

    from service.sinks.hub.masks import PooledSecrets, install

    install()
    install()  # idempotent
    assert isinstance(websockets.frames.secrets, PooledSecrets)
    pool = PooledSecrets(block=64)
    keys = [pool.token_bytes(4) for _ in range(64)]  # four blocks' worth
    assert all(len(key) == 4 for key in keys)
    assert len(set(keys)) > 60  # 2**32 values: repeats are (almost) impossible
    frame = websockets.frames.Frame(websockets.frames.Opcode.TEXT, b"hello")
    masked = frame.serialize(mask=True)
    assert len(masked) == 2 + 4 + 5
    key, body = masked[2:6], masked[6:]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == b"hello"
