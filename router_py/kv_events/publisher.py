"""vLLM's ZMQ publisher protocol: a PUB socket sending ``(topic, seq, payload)`` multipart messages, ``seq`` an
8-byte big-endian counter from 0, ``payload`` one msgpack ``EventBatch``; optionally a ROUTER socket answering
replay requests (an 8-byte big-endian start seq) with every buffered ``(seq, payload)`` from there, then
``(-1 as 8 signed bytes, b"")``.

Encoding and sending run on one thread, so the event loop only appends tuples to a queue.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Sequence

import zmq

from router_py.kv_events.config import KvEventsConfig
from router_py.kv_events.wire import RawEvent, encode_batch

log = logging.getLogger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)
_POLL_S = 0.1


def binds(endpoint: str) -> bool:
    """vLLM's rule: a wildcard or local transport is bound, anything else connected to."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class ZmqEventPublisher:
    """Publishes event batches in order on a background thread.

    Args: config: the parsed ``--kv-events-config``; block_size: the tree's block size (in BlockStored).
    Raises zmq.ZMQError when an endpoint cannot be bound (at construction, so a bad flag fails at start).
    """

    def __init__(self, config: KvEventsConfig, block_size: int, dp_rank: int = 0) -> None:
        self._config, self._block_size, self._dp_rank = config, block_size, dp_rank
        self._queue: queue.Queue[tuple[float, Sequence[RawEvent]] | None] = queue.Queue(config.max_queue_size)
        self._buffer: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=config.buffer_steps)
        self._topic = config.topic.encode()
        self.dropped_batches = 0
        ctx = zmq.Context.instance()
        self._pub = ctx.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        self._replay: zmq.Socket | None = None
        try:
            if binds(config.endpoint):
                self._pub.bind(config.endpoint)
            else:
                self._pub.connect(config.endpoint)
            if config.replay_endpoint is not None:
                self._replay = ctx.socket(zmq.ROUTER)
                self._replay.bind(config.replay_endpoint)
        except zmq.ZMQError:
            self._close_sockets()
            raise
        self._thread = threading.Thread(target=self._run, name="kv-events", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """The PUB socket's address (the bound port when the config asked for ``:*`` or a wildcard)."""
        return self._pub.getsockopt_string(zmq.LAST_ENDPOINT) or self._config.endpoint

    @property
    def replay_endpoint(self) -> str | None:
        return None if self._replay is None else self._replay.getsockopt_string(zmq.LAST_ENDPOINT)

    def publish(self, ts: float, events: Sequence[RawEvent]) -> None:
        """Queue one batch; never blocks. A full queue (the thread far behind) drops the batch with an error
        log: subscribers then miss it, as vLLM's subscribers miss what passed its high-water mark."""
        try:
            self._queue.put_nowait((ts, events))
        except queue.Full:
            self.dropped_batches += 1
            log.error("kv events: queue full (%d batches), batch dropped", self._config.max_queue_size)

    def shutdown(self, timeout: float = 2.0) -> None:
        """Send what is queued (within ``timeout``), stop the thread, close the sockets."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._close_sockets()

    def _close_sockets(self) -> None:
        self._pub.close(linger=500)
        if self._replay is not None:
            self._replay.close(linger=0)

    def _run(self) -> None:
        seq = 0
        while True:
            if self._replay is not None and self._replay.poll(0):
                self._serve_replay()
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is None:
                return
            ts, events = item
            try:
                payload = encode_batch(ts, events, self._block_size, self._config.encoding, self._dp_rank)
                self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload))
            except Exception:  # NOTE: a bad batch must not stop the stream; logged, its seq skipped
                log.exception("kv events: publishing batch %d failed", seq)
                time.sleep(_POLL_S)
            else:
                self._buffer.append((seq, payload))
            seq += 1

    def _serve_replay(self) -> None:
        assert self._replay is not None
        frames = self._replay.recv_multipart()
        if len(frames) != 3 or len(frames[2]) != 8:
            log.warning("kv events: malformed replay request (%d frames)", len(frames))
            return
        client, _, start = frames
        first = int.from_bytes(start, "big")
        for seq, payload in list(self._buffer):
            if seq >= first:
                self._replay.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
        self._replay.send_multipart((client, b"", END_SEQ, b""))
