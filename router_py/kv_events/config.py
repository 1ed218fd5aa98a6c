"""``--kv-events-config``: vLLM's JSON object, the same keys and defaults (plus ``encoding``, ours)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, fields

ENCODINGS = ("array", "map")


@dataclass(frozen=True)
class KvEventsConfig:
    """vLLM's ``KVEventsConfig`` keys. ``publisher`` defaults to "zmq" when events are enabled, else "null".
    ``endpoint``: bound when it holds ``*``, ``::``, ``ipc://`` or ``inproc://``, else connected (vLLM's rule).
    ``encoding`` (not vLLM's): "array", each event a msgspec tagged array (vLLM up to 0.23, what every
    consumer decodes), or "map", each event a tagged map (vLLM after its PR 42892)."""

    enable_kv_cache_events: bool = False
    publisher: str | None = None
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""
    encoding: str = "array"

    @property
    def enabled(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"

    def for_replica(self, rank: int) -> KvEventsConfig:
        """The config of data-parallel replica ``rank`` (vLLM's convention for its DP ranks): each publishes on
        its own endpoints, a TCP port ``rank`` above the configured one (a wildcard port stays one), an
        ``ipc://``/``inproc://`` name with ``_dp{rank}`` appended; rank 0 keeps them as given."""
        if rank == 0:
            return self
        replay = None if self.replay_endpoint is None else _offset(self.replay_endpoint, rank)
        return dataclasses.replace(self, endpoint=_offset(self.endpoint, rank), replay_endpoint=replay)

    @classmethod
    def parse(cls, text: str | None) -> KvEventsConfig:
        """Parse the flag's JSON (None or "": disabled). Raises ValueError on bad JSON, an unknown key, a wrong
        type, or an unknown publisher or encoding."""
        if not text:
            return cls()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--kv-events-config is not JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ValueError("--kv-events-config must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        for key, value in raw.items():
            if key not in known:
                raise ValueError(f"--kv-events-config: unknown key {key!r} (known: {', '.join(known)})")
            _check_type(key, value)
        config = cls(**raw)
        if config.publisher is None:
            config = cls(**{**raw, "publisher": "zmq" if config.enable_kv_cache_events else "null"})
        if config.publisher not in ("null", "zmq"):
            raise ValueError(f"--kv-events-config: unknown publisher {config.publisher!r} (null, zmq)")
        if config.encoding not in ENCODINGS:
            raise ValueError(f"--kv-events-config: unknown encoding {config.encoding!r} ({', '.join(ENCODINGS)})")
        return config


def _offset(endpoint: str, rank: int) -> str:
    if not endpoint.startswith("tcp://"):
        return f"{endpoint}_dp{rank}"
    host, _, port = endpoint.rpartition(":")
    return endpoint if port == "*" else f"{host}:{int(port) + rank}"


_TYPES: dict[str, tuple[type, ...]] = {
    "enable_kv_cache_events": (bool,), "publisher": (str, type(None)), "endpoint": (str,),
    "replay_endpoint": (str, type(None)), "buffer_steps": (int,), "hwm": (int,), "max_queue_size": (int,),
    "topic": (str,), "encoding": (str,),
}


def _check_type(key: str, value: object) -> None:
    types = _TYPES[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ValueError(f"--kv-events-config: {key!r} has the wrong type ({type(value).__name__})")
    if key in ("buffer_steps", "hwm", "max_queue_size") and value < 1:  # type: ignore[operator]
        raise ValueError(f"--kv-events-config: {key!r} must be >= 1")


def kv_events_arg(text: str) -> str:
    """argparse ``type`` for ``--kv-events-config``: checks the JSON at parse time, keeps the text (the launcher
    forwards it verbatim). Raises argparse.ArgumentTypeError with the reason."""
    try:
        KvEventsConfig.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--kv-events-config: ")) from None
    return text
