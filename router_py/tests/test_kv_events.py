"""KV cache events: the tree's observer, vLLM's wire format, the ZMQ publisher, checked by a real subscriber that
rebuilds the set of cached blocks (router_py/tests/kv_subscriber.py)."""

from __future__ import annotations

import argparse
import random
import time

import msgpack
import pytest
import zmq

from prism_cache import RadixAllocator
from router_py.kv_events.collector import KvEventCollector
from router_py.kv_events.config import KvEventsConfig, kv_events_arg
from router_py.kv_events.publisher import ZmqEventPublisher
from router_py.kv_events.wire import HASH_MASK, encode_batch
from router_py.tests.kv_subscriber import Subscriber

LOOPBACK = "tcp://127.0.0.1:*"


class Stream:
    """Publisher + collector + subscriber on loopback, with the slow-joiner handshake done."""

    def __init__(
        self, encoding: str = "array", topic: str = "kv", block_size: int = 4, tiers: bool = False
    ) -> None:
        config = KvEventsConfig.parse(
            f'{{"enable_kv_cache_events": true, "endpoint": "{LOOPBACK}", "topic": "{topic}", '
            f'"encoding": "{encoding}", "replay_endpoint": "{LOOPBACK}"}}'
        )
        self.publisher = ZmqEventPublisher(config, block_size)
        self.published = 0
        self.collector = KvEventCollector(self._publish, tiers=tiers)
        self.sub = Subscriber(self.publisher.endpoint, topic)
        deadline = time.monotonic() + 10
        while not self.sub.receive(0.05):  # PUB drops what it sends before the SUB has joined
            assert time.monotonic() < deadline, "subscriber never joined"
            self._publish(time.time(), [])
        self.sub.last_seq = self.published - 1  # the handshake's stragglers are still queued: skip them
        self._skip_handshake()

    def _publish(self, ts: float, events: list) -> None:
        self.publisher.publish(ts, events)
        self.published += 1

    def _skip_handshake(self) -> None:
        while self.sub.sock.poll(200):
            _, seq, _ = self.sub.sock.recv_multipart()
            if int.from_bytes(seq, "big") == self.published - 1:
                break

    def sync(self) -> None:
        """Flush and wait until the subscriber has applied every published batch."""
        self.collector.flush()
        deadline = time.monotonic() + 30
        while self.sub.last_seq != self.published - 1:
            assert time.monotonic() < deadline, f"got up to {self.sub.last_seq} of {self.published}"
            self.sub.receive(0.1)

    def close(self) -> None:
        self.publisher.shutdown()
        self.sub.close()


def published(alloc: RadixAllocator) -> set[int]:
    return {h & HASH_MASK for h in alloc.cached_hashes()}


def churn(seed: int, ops: int, stream: Stream, clears: int = 3) -> None:
    """``ops`` random facade operations (enqueue, dequeue, batch+allocate with evictions, cache_prompt,
    release, rollback, look-ahead) with ``clears`` cache replacements; the subscriber's view must equal the
    tree at every clear and at the end."""
    rng = random.Random(seed)
    bs = 4
    policy = rng.choice(["lru", "dart", "lfu", "hotprefix"])
    make = lambda: RadixAllocator(48, bs, policy, observer=stream.collector)  # noqa: E731
    alloc = make()
    stems = [[rng.randrange(50) for _ in range(rng.randrange(4, 24))] for _ in range(6)]
    waiting: list[tuple[str, tuple[int, ...], list[int]]] = []
    running: list[tuple[tuple[int, ...], list[int], object, bool]] = []
    clear_at = set(rng.sample(range(ops // 10, ops), clears))
    for step in range(ops):
        op = rng.random()
        if step in clear_at:
            stream.collector.flush()
            stream.sync()
            assert stream.sub.view.blocks.keys() == published(alloc)
            stream.collector.cleared()  # as the router's announce_empty does before a rebuild
            alloc, waiting, running = make(), [], []
        elif op < 0.3 or not (waiting or running):
            ns = rng.choice(["", "tenant-a\x00salt"])
            prompt = tuple(rng.choice(stems) + [rng.randrange(50) for _ in range(rng.randrange(0, 12))])
            hashes = alloc.hashes(ns, prompt)
            alloc.enqueue(ns, prompt, hashes)
            waiting.append((ns, prompt, hashes))
        elif op < 0.55 and waiting:
            ns, prompt, hashes = waiting.pop(rng.randrange(len(waiting)))
            alloc.dequeue(hashes)
            with alloc.batch([hashes]):
                a = alloc.allocate(len(prompt) + rng.randrange(1, 8), ns, prompt)
            if a is None:
                continue
            running.append((prompt, hashes, a, False))
        elif op < 0.65 and running:
            i = rng.randrange(len(running))
            prompt, hashes, a, done = running[i]
            if not done:
                alloc.cache_prompt(a, prompt, hashes)
                running[i] = (prompt, hashes, a, True)
        elif op < 0.7 and waiting:
            ns, prompt, hashes = rng.choice(waiting)
            alloc.lookahead_enter(ns, prompt, hashes)
            alloc.lookahead_leave(hashes)
        elif running:
            prompt, hashes, a, _ = running.pop(rng.randrange(len(running)))
            if rng.random() < 0.85:
                alloc.release(a, prompt, hashes)
            else:
                alloc.rollback(a)
        if rng.random() < 0.5:
            stream.collector.flush()  # a scheduling step ends
    for prompt, hashes, a, _ in running:
        alloc.release(a, prompt, hashes)
    alloc.check_integrity()
    stream.sync()
    view = stream.sub.view
    assert view.errors == []
    assert stream.sub.gaps == 0
    expected = published(alloc)
    assert len(view.blocks.keys() ^ expected) == 0, "differences between the subscriber and the tree"
    assert view.clears == clears
    assert alloc.sizes().evicted > 100  # the churn did evict


def test_subscriber_rebuilds_the_tree_after_10000_operations() -> None:
    stream = Stream("array")
    try:
        churn(seed=15, ops=10_000, stream=stream)
    finally:
        stream.close()


def test_map_encoding_rebuilds_the_tree_too() -> None:
    stream = Stream("map")
    try:
        churn(seed=3, ops=1_500, stream=stream, clears=1)
    finally:
        stream.close()


def test_block_stored_chains_parent_hashes_and_tokens() -> None:
    """One prompt, then a longer one sharing its first two blocks: the second BlockStored hangs under the
    first's block 2, its tokens are exactly the new blocks', and only the tenant's chain head has extra keys."""
    stream = Stream("array")
    try:
        alloc = RadixAllocator(32, 4, "lru", observer=stream.collector)
        first, second = tuple(range(1, 11)), tuple(range(1, 9)) + (90, 91, 92, 93, 94)
        for prompt in (first, second):
            a = alloc.allocate(len(prompt) + 1, "t", prompt)
            alloc.release(a, prompt)
        stream.sync()
        h1, h2 = alloc.hashes("t", first), alloc.hashes("t", second)
        blocks = stream.sub.view.blocks
        assert blocks[h1[0] & HASH_MASK] == (None, (1, 2, 3, 4), ["t"])
        assert blocks[h1[1] & HASH_MASK] == (h1[0] & HASH_MASK, (5, 6, 7, 8), None)
        assert blocks[h2[2] & HASH_MASK] == (h1[1] & HASH_MASK, (90, 91, 92, 93), None)
        assert len(blocks) == 3  # 10 tokens: 2 full blocks; 13 tokens: 3, two shared
    finally:
        stream.close()


def test_wire_format_is_vllms() -> None:
    """Field order, tag, unsigned hashes, every field in the array form, defaults omitted in the map form; the
    batch is [ts, events, data_parallel_rank]."""
    events = [
        ("stored", "", -5, (-1, 7), (1, 2, 3, 4, 5, 6, 7, 8), "GPU"), ("removed", (7,), "GPU"), ("cleared",)
    ]
    array = msgpack.unpackb(encode_batch(1.5, events, 4, "array"))
    assert array == [1.5, [
        ["BlockStored", [(1 << 64) - 1, 7], (1 << 64) - 5, [1, 2, 3, 4, 5, 6, 7, 8], 4, None, "GPU", None,
         [None, None], 0, "full_attention", None],
        ["BlockRemoved", [7], "GPU", 0],
        ["AllBlocksCleared"],
    ], 0]
    as_map = msgpack.unpackb(encode_batch(1.5, events, 4, "map"))
    assert as_map == [1.5, [
        {"type": "BlockStored", "block_hashes": [(1 << 64) - 1, 7], "parent_block_hash": (1 << 64) - 5,
         "token_ids": [1, 2, 3, 4, 5, 6, 7, 8], "block_size": 4, "lora_id": None, "medium": "GPU",
         "lora_name": None, "extra_keys": [None, None], "group_idx": 0, "kv_cache_spec_kind": "full_attention"},
        {"type": "BlockRemoved", "block_hashes": [7], "medium": "GPU", "group_idx": 0},
        {"type": "AllBlocksCleared"},
    ], 0]


def test_replay_socket_resends_from_a_sequence_number() -> None:
    stream = Stream("array")
    try:
        start = stream.published
        for i in range(3):
            stream.collector.removed([i])
            stream.collector.flush()
        stream.sync()
        # NOTE: a DEALER, as a client wanting the whole reply stream (a REQ socket takes one reply per request)
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.connect(stream.publisher.replay_endpoint)
        dealer.send_multipart([b"", (start + 1).to_bytes(8, "big")])
        got = []
        while True:
            assert dealer.poll(5000)
            empty, seq, payload = dealer.recv_multipart()
            assert empty == b""
            if not payload:
                assert int.from_bytes(seq, "big", signed=True) == -1
                break
            got.append((int.from_bytes(seq, "big"), msgpack.unpackb(payload)[1]))
        dealer.close(linger=0)
        assert got == [(start + 1, [["BlockRemoved", [1], "GPU", 0]]), (start + 2, [["BlockRemoved", [2], "GPU", 0]])]
    finally:
        stream.close()


def test_config_is_vllms_flag() -> None:
    on = KvEventsConfig.parse('{"enable_kv_cache_events": true}')
    assert (on.enabled, on.publisher, on.endpoint, on.buffer_steps, on.hwm, on.topic) == (
        True, "zmq", "tcp://*:5557", 10_000, 100_000, "")
    assert not KvEventsConfig.parse(None).enabled
    assert not KvEventsConfig.parse('{"enable_kv_cache_events": false}').enabled
    assert not KvEventsConfig.parse('{"enable_kv_cache_events": true, "publisher": "null"}').enabled
    for bad in ('{"enable": true}', "[1]", "{", '{"hwm": "1"}', '{"publisher": "nats"}', '{"encoding": "x"}',
                '{"buffer_steps": 0}'):
        with pytest.raises(argparse.ArgumentTypeError):
            kv_events_arg(bad)


def test_each_data_parallel_replica_publishes_on_its_own_endpoint_with_its_rank() -> None:
    config = KvEventsConfig.parse('{"enable_kv_cache_events": true, "endpoint": "tcp://*:5557", '
                                  '"replay_endpoint": "tcp://*:5560"}')
    assert config.for_replica(0) == config
    assert (config.for_replica(2).endpoint, config.for_replica(2).replay_endpoint) == ("tcp://*:5559", "tcp://*:5562")
    assert KvEventsConfig(endpoint="ipc:///tmp/kv").for_replica(1).endpoint == "ipc:///tmp/kv_dp1"
    assert KvEventsConfig(endpoint=LOOPBACK).for_replica(3).endpoint == LOOPBACK

    from router_py.cli import kv_events

    events = kv_events(f'{{"enable_kv_cache_events": true, "endpoint": "{LOOPBACK}"}}', 4, replica=1)
    assert events is not None
    publisher, collector = events
    sub = Subscriber(publisher.endpoint)
    try:
        deadline = time.monotonic() + 10
        while not sub.sock.poll(50):  # NOTE: PUB drops what it sends before the SUB has joined
            assert time.monotonic() < deadline, "subscriber never joined"
            collector.cleared()
            collector.flush()
        _, _, payload = sub.sock.recv_multipart()
        assert msgpack.unpackb(payload)[2] == 1  # EventBatch.data_parallel_rank
    finally:
        publisher.shutdown()
        sub.close()


def test_no_observer_no_events() -> None:
    """Without an observer the allocator runs as before (the hook is one None check per stored/evicted run)."""
    alloc = RadixAllocator(8, 4, "lru")
    for p in range(20):
        prompt = tuple(range(p, p + 12))
        a = alloc.allocate(13, "", prompt)
        assert a is not None
        alloc.release(a, prompt)
    assert alloc.sizes().evicted > 0


def test_router_announces_an_empty_tree_at_each_scheduler_build() -> None:
    """Startup and every rebuild after a shard restart: AllBlocksCleared first, then the new tree's events."""
    from router_py.cli import announce_empty, kv_events

    assert kv_events(None, 16) is None and kv_events('{"enable_kv_cache_events": false}', 16) is None
    seen: list = []
    collector = KvEventCollector(lambda ts, events: seen.append(list(events)))
    build = announce_empty(lambda: RadixAllocator(8, 4, "lru", observer=collector), collector)
    for _ in range(2):
        alloc = build()
        a = alloc.allocate(9, "", tuple(range(8)))
        alloc.release(a, tuple(range(8)))
        collector.flush()
    assert [[e[0] for e in batch] for batch in seen] == [["cleared", "stored"], ["cleared", "stored"]]


def test_launcher_passes_the_flag_through_verbatim() -> None:
    from router_py.launch import launcher

    text = '{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://127.0.0.1:5557"}'
    args = launcher.build_parser().parse_args(["--kv-events-config", text])
    command = launcher.router_command(args, "/models/m", "org/m")
    assert command[command.index("--kv-events-config") + 1] == text
    with pytest.raises(SystemExit):
        launcher.build_parser().parse_args(["--kv-events-config", '{"enable_kv_cache_events": 1}'])
