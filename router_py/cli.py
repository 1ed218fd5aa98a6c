"""``prism-router`` / ``text-generation-router``: TGI's router command line, plus PRISM's scheduler flags.

Every flag also reads its UPPER_SNAKE environment variable (``--max-input-tokens`` <- ``MAX_INPUT_TOKENS``);
the command line wins. Startup order as TGI's: connect to the shards, ClearCache, Info, Warmup, and only then
open the HTTP listener, so ``/health`` refuses connections until the model is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prism_cache import POLICY_NAMES, CacheObserver
from prism_cache.tiers.types import TIER_POLICIES, TierConfig
from router_py import env, event_loop
from router_py.engine.backend_config import BackendConfig
from router_py.engine.batcher import Batcher
from router_py.engine.dp_backend import DataParallelBackend
from router_py.router_config import RouterConfig
from router_py.launch.env_args import EnvArgs
from router_py.backend_api import DEFAULT_PREFILL_TOKENS, BackendInfo
from router_py.metrics import Metrics
from router_py.scheduling.interface import Scheduler, SchedulerConfig
from router_py.scheduling.registry import SCHEDULERS as SCHEDULER_REGISTRY
from router_py.shard_client.client import ShardClient, ShardError
from router_py.shard_client.messages import ShardInfo
from router_py.engine.warmup import StartupError, handshake_all
from router_py.kv_events.config import KvEventsConfig, kv_events_arg
from router_py.tenancy import Tenants, load_keys_file

if TYPE_CHECKING:
    from router_py.kv_events.collector import KvEventCollector
    from router_py.kv_events.publisher import ZmqEventPublisher

log = logging.getLogger("router_py")

SCHEDULERS = tuple(SCHEDULER_REGISTRY)  # the CLI's choices, read from the registries
CACHE_POLICIES = POLICY_NAMES


def build_parser() -> argparse.ArgumentParser:
    p = EnvArgs(argparse.ArgumentParser(prog="prism-router", description=__doc__.split("\n\n")[0]))
    # ---- shards and model ----
    p.add("--master-shard-uds-path", default="/tmp/text-generation-server-0")
    p.add("--replica-shard-uds-path", action="append", default=None, metavar="PATH",
          help="data parallelism: the master shard socket of each replica (shard group), repeatable; given, it "
               "replaces --master-shard-uds-path and each request goes to the replica chosen by its cached "
               "prefix and load (docs/data-parallel.md)")
    p.add("--tokenizer-name", default="bigscience/bloom", help="local model folder with tokenizer.json")
    p.add("--served-model-name", default=None, help="model id reported by /info and /v1/models")
    # ---- HTTP ----
    p.add("--hostname", default="0.0.0.0")
    p.add("--port", type=int, default=3000)
    p.add("--api-key", default=None)
    p.add("--payload-limit", type=int, default=2_000_000)
    p.add("--cors-allow-origin", action="append", default=None, help="repeatable (env: comma-separated)")
    p.add("--tenant-header", default=None,
          help="request header naming the cache namespace (only behind a proxy that sets it; ignored for keys-file "
               "tenants)")
    p.add("--api-keys-file", default=None,
          help="one tenant per line: TENANT KEY [SHARE]; each key is its own cache namespace, SHARE its fraction "
               "of the KV blocks")
    p.add("--json-output", action="store_true")
    p.add("--otlp-endpoint", default=None)
    p.add("--otlp-service-name", default=None,
          help="default: OTEL_SERVICE_NAME, else text-generation-inference.router")
    # ---- validation limits ----
    p.add("--max-concurrent-requests", type=int, default=128)
    p.add("--max-best-of", type=int, default=2)
    p.add("--max-stop-sequences", type=int, default=4)
    p.add("--max-top-n-tokens", type=int, default=5)
    p.add("--max-client-batch-size", type=int, default=4)
    p.add("--validation-workers", type=int, default=2, help="threads that tokenize prompts")
    p.add("--max-input-tokens", type=int, default=None)
    p.add("--max-total-tokens", type=int, default=None)
    p.add("--disable-grammar-support", action="store_true")
    # ---- batching ----
    p.add("--max-batch-prefill-tokens", type=int, default=None,
          help=f"tokens per prefill step; default {DEFAULT_PREFILL_TOKENS}, lowered to what the shard's KV "
               "pool holds (a value set here is kept, and refused at start if the pool cannot hold it)")
    p.add("--max-batch-total-tokens", type=int, default=None)
    p.add("--max-batch-size", type=int, default=None)
    p.add("--waiting-served-ratio", type=float, default=1.2)
    p.add("--max-waiting-tokens", type=int, default=20)
    p.add("--shard-recovery-timeout", type=float, default=120.0,
          help="seconds queued requests wait for a lost shard to come back before they are refused")
    # ---- PRISM ----
    p.add("--scheduler", choices=SCHEDULERS, default="qas")
    p.add("--cache-policy", choices=CACHE_POLICIES, default="dart")
    p.add("--no-prefix-cache", action="store_true", help="never reuse cached prompt blocks")
    p.add("--scheduler-param", action="append", default=None, metavar="KEY=VALUE",
          help="scheduler/policy knob, repeatable (env: comma-separated)")
    p.add("--kv-tier-policy", choices=TIER_POLICIES, default="dart",
          help="placement across the shard's host/disk KV tiers, when it has them (docs/kv-tiers-wire.md)")
    # ---- KV cache events ----
    p.add("--kv-events-config", type=kv_events_arg, default=None, metavar="JSON",
          help="vLLM's flag: publish the prefix cache's stored/removed blocks over ZMQ, e.g. "
               '\'{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557"}\' '
               "(docs/kv-events.md)")
    return p.parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    try:
        args.scheduler_params = parse_params(args.scheduler_param or [])
        check_batch_total(args)
    except ValueError as e:
        build_parser().error(str(e))
    return args


def check_batch_total(args: argparse.Namespace) -> None:
    """TGI's router refuses, at start, a ``--max-batch-total-tokens`` below the prefill budget or below
    ``--max-total-tokens``. Raises ValueError with TGI's message."""
    batch_total = args.max_batch_total_tokens
    if batch_total is None:
        return
    prefill, total = prefill_tokens(args), args.max_total_tokens
    if prefill > batch_total:
        raise ValueError(
            f"`max_batch_prefill_tokens` must be <= `max_batch_total_tokens`. Given: {prefill} and {batch_total}"
        )
    if total is not None and total > batch_total:
        raise ValueError(f"`max_total_tokens` must be <= `max_batch_total_tokens`. Given: {total} and {batch_total}")


def prefill_tokens(args: argparse.Namespace) -> int:
    """``--max-batch-prefill-tokens``, else the default (which the handshake may lower to fit the KV pool)."""
    given = args.max_batch_prefill_tokens
    return DEFAULT_PREFILL_TOKENS if given is None else given


def parse_params(items: Sequence[str]) -> dict[str, float]:
    """``["k=1.5", "w=3"]`` -> ``{"k": 1.5, "w": 3.0}``; raises ValueError on a malformed item."""
    params: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ValueError(f"--scheduler-param expects KEY=NUMBER, got {item!r}")
    return params


def bind_host(hostname: str) -> str:
    """TGI's rule: a HOSTNAME that is not an IP address (Docker sets the container name) binds 0.0.0.0."""
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        log.warning("invalid hostname %r (not an IP address), defaulting to 0.0.0.0", hostname)
        return "0.0.0.0"
    return hostname


# ---- wiring ----------------------------------------------------------------------------------------------


def backend_config(args: argparse.Namespace) -> BackendConfig:
    return BackendConfig(
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
        max_batch_prefill_tokens=prefill_tokens(args),
        max_batch_prefill_tokens_set=args.max_batch_prefill_tokens is not None,
        max_batch_total_tokens=args.max_batch_total_tokens,
        max_batch_size=args.max_batch_size,
        waiting_served_ratio=args.waiting_served_ratio,
        max_waiting_tokens=args.max_waiting_tokens,
        shard_recovery_timeout_s=args.shard_recovery_timeout,
    )


def scheduler_config(
    args: argparse.Namespace, info: BackendInfo, shard: ShardInfo, observer: CacheObserver | None = None
) -> SchedulerConfig:
    return SchedulerConfig(
        scheduler=args.scheduler,
        cache_policy=args.cache_policy,
        prefix_caching=shard.use_prefix_caching and not args.no_prefix_cache,
        num_blocks=None if shard.requires_padding else info.max_batch_total_tokens // shard.block_size,
        block_size=shard.block_size,
        speculate=shard.speculate,
        support_chunking=shard.support_chunking,
        params=args.scheduler_params,
        cache_observer=observer,
        tiers=tier_config(info, args.kv_tier_policy),
    )


def tier_config(info: BackendInfo, policy: str) -> TierConfig | None:
    """The tiers the shard allocated at Warmup (None when it has none)."""
    if not info.kv_host_blocks and not info.kv_disk_blocks:
        return None
    return TierConfig(info.kv_host_blocks, info.kv_disk_blocks, policy)


def tenants(args: argparse.Namespace) -> Tenants | None:
    """The keys file's tenants (None without one). Raises KeysFileError (a ValueError)."""
    return load_keys_file(args.api_keys_file) if args.api_keys_file else None


def scheduler_factory(
    config: SchedulerConfig, known: Tenants | None, max_total_tokens: int = 0, shared_key: bool = False
) -> Callable[[], Scheduler]:
    """Builds the scheduler: one partition per tenant with a capacity share (each able to hold a request of
    ``max_total_tokens``), else a single one. The first build runs here, so a bad share fails at start.
    ``shared_key``: ``--api-key`` is accepted too; its requests, like those of keys-file tenants without a
    share, use the blocks the shares leave over, which must then hold a request."""
    from router_py.scheduling.registry import make_scheduler
    from router_py.scheduling.tenant_partitions import TenantPartitionedScheduler

    if known is None or not known.shares:
        return lambda: make_scheduler(config)
    min_blocks = -(-max_total_tokens // config.block_size) + 1

    others = shared_key or any(tenant not in known.shares for tenant in known.by_key.values())

    def make() -> Scheduler:
        return TenantPartitionedScheduler(config, known.shares, make_scheduler, min_blocks, others)

    make()
    return make


def router_config(args: argparse.Namespace, info: BackendInfo, known: Tenants | None = None) -> RouterConfig:
    origins = tuple(o for item in args.cors_allow_origin or [] for o in item.split(",") if o)
    return RouterConfig(
        model_id=args.served_model_name or args.tokenizer_name,
        max_concurrent_requests=args.max_concurrent_requests,
        max_best_of=args.max_best_of,
        max_stop_sequences=args.max_stop_sequences,
        max_top_n_tokens=args.max_top_n_tokens,
        max_input_tokens=info.max_input_tokens,
        max_total_tokens=info.max_total_tokens,
        max_client_batch_size=args.max_client_batch_size,
        validation_workers=args.validation_workers,
        payload_limit=args.payload_limit,
        api_key=args.api_key,
        cors_allow_origin=origins,
        compute_type=env.compute_type(),
        tenant_header=args.tenant_header,
        tenants=known,
        disable_grammar_support=args.disable_grammar_support,
        prefix_caching=not args.no_prefix_cache,
        docker_label=env.docker_label(),
    )


async def serve(args: argparse.Namespace) -> int:
    """Connect, warm up, then serve HTTP until SIGINT/SIGTERM."""
    import uvicorn

    from router_py import tracing
    from router_py.http.server import create_app
    from router_py.tokenizer import Tokenizer

    tracing.setup_tracing(tracing.otlp_endpoint(args.otlp_endpoint),
                          tracing.service_name(args.otlp_service_name))
    if not (Path(args.tokenizer_name) / "tokenizer.json").is_file():
        raise StartupError(f"--tokenizer-name {args.tokenizer_name!r} is not a local model folder with tokenizer.json")
    tokenizer = Tokenizer.from_model_dir(args.tokenizer_name)
    off = tokenizer.prefix_reuse_off
    log.info("prompt openings' token ids reused across requests: %s", f"no ({off})" if off else "yes")
    known = tenants(args)  # NOTE: a bad keys file fails before the shards are touched
    paths = args.replica_shard_uds_path or [args.master_shard_uds_path]
    clients = [await _connect(path) for path in paths]
    config = backend_config(args)
    handshakes = await handshake_all(clients, config)
    info, shard = handshakes[0]
    log.info("warmup done: %s%s", info, f" (each of {len(paths)} replicas)" if len(paths) > 1 else "")
    log.info(
        "limits: max_input_tokens %d, max_total_tokens %d (%s), max_batch_prefill_tokens %d (%s)",
        info.max_input_tokens, info.max_total_tokens,
        "as set" if args.max_total_tokens is not None else "chosen by the shard: min(usable KV pool, "
        "max_position_embeddings), input one less; see the shard's Warmup log line",
        info.max_batch_prefill_tokens,
        "as set" if args.max_batch_prefill_tokens is not None
        else f"default {DEFAULT_PREFILL_TOKENS}, at most what the KV pool holds",
    )
    metrics = Metrics(info.max_input_tokens, info.max_total_tokens)
    # NOTE: one publisher per replica (its own endpoint and data_parallel_rank), as vLLM's DP ranks publish
    events = [
        kv_events(args.kv_events_config, shard.block_size, g, tier_config(i, args.kv_tier_policy) is not None)
        for g, (i, _) in enumerate(handshakes)
    ]
    batchers, caching = [], True
    for g, (client, (replica_info, replica_shard)) in enumerate(zip(clients, handshakes)):
        observer = events[g][1] if events[g] is not None else None
        sched = scheduler_config(args, replica_info, replica_shard, observer)
        caching = caching and sched.prefix_caching and sched.num_blocks is not None  # NOTE: None: padded shard
        make = scheduler_factory(
            sched, known, replica_info.max_total_tokens, shared_key=args.api_key is not None
        )
        if observer is not None:
            make = announce_empty(make, observer)
        replica_metrics = metrics.labeled(replica=str(g)) if len(paths) > 1 else metrics
        batchers.append(
            Batcher(client, replica_info, config, make(), replica_metrics, tokenizer.encode, scheduler_factory=make)
        )
    batcher: Batcher | DataParallelBackend = (
        batchers[0] if len(batchers) == 1 else DataParallelBackend(batchers, prefix_caching=caching)
    )
    batcher.start()
    app = create_app(batcher, tokenizer, router_config(args, batcher.info, known), metrics)
    if not args.disable_grammar_support:
        from router_py.http.grammar import start_workers

        start_workers()  # NOTE: the grammar-check processes import in the background, not on a first request
    host = bind_host(args.hostname)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=args.port, log_config=None, access_log=False, http=event_loop.http_parser()
    ))
    server.handle_exit = on_stop_signal(server.handle_exit, batcher.begin_stop)
    log.info("serving on http://%s:%d (%s)", host, args.port, event_loop.describe())
    # NOTE: uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler that was
    # installed before it; this one lets the router exit 0 after that graceful stop, as TGI's does.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    # NOTE: what start-up built (libraries, app, tokenizer) leaves the collector's generations, so a full
    # collection scans only what serving made since, not the whole heap with the loop stalled
    gc.collect()
    gc.freeze()
    try:
        await server.serve()
    finally:
        await batcher.stop()
        for client in clients:
            await client.close()
        for publisher_collector in events:
            if publisher_collector is not None:
                publisher_collector[1].flush()
                publisher_collector[0].shutdown()
        tracing.shutdown()  # NOTE: the last spans; bounded when the receiver is down (router_py.span_export)
    return 0


def on_stop_signal(
    handle_exit: Callable[[int, Any], None], begin_stop: Callable[[], None]
) -> Callable[[int, Any], None]:
    """uvicorn's signal handler, then ``begin_stop`` on the event loop: after a stop signal uvicorn waits for
    every open stream to end, and those of requests waiting for a lost shard would not (the launcher stops
    the router when it gives up on a shard)."""
    loop = asyncio.get_running_loop()

    def handler(sig: int, frame: Any) -> None:
        handle_exit(sig, frame)
        # NOTE: a signal handler runs between any two bytecodes of the loop's thread; the backend is touched
        # from the loop, as everywhere else
        loop.call_soon_threadsafe(begin_stop)

    return handler


def kv_events(
    text: str | None, block_size: int, replica: int = 0, tiers: bool = False
) -> tuple[ZmqEventPublisher, KvEventCollector] | None:
    """The publisher and the tree observer of ``--kv-events-config`` for data-parallel replica ``replica``
    (None when events are off; :meth:`KvEventsConfig.for_replica` gives its endpoints); ``tiers``: the replica's
    shard has host/disk tiers (their copies are published too). Raises ValueError on a bad config and
    StartupError when the endpoint cannot be bound."""
    config = KvEventsConfig.parse(text).for_replica(replica)
    if not config.enabled:
        return None
    import zmq

    from router_py.kv_events.collector import KvEventCollector
    from router_py.kv_events.publisher import ZmqEventPublisher

    try:
        publisher = ZmqEventPublisher(config, block_size, dp_rank=replica)
    except zmq.ZMQError as e:
        raise StartupError(f"--kv-events-config: cannot open {config.endpoint}: {e}") from None
    log.info("kv cache events: publishing on %s (topic %r, %s encoding, data_parallel_rank %d)", publisher.endpoint,
             config.topic, config.encoding, replica)
    return publisher, KvEventCollector(publisher.publish, tiers=tiers)


def announce_empty(make: Callable[[], Scheduler], observer: CacheObserver) -> Callable[[], Scheduler]:
    """Each scheduler build (at start, after a shard restart) starts from an empty tree: subscribers are told
    AllBlocksCleared first, so a view kept from before the restart is dropped."""

    def build() -> Scheduler:
        observer.cleared()
        return make()

    return build


async def _connect(path: str) -> ShardClient:
    try:
        return await ShardClient.connect(path)
    except ShardError as e:
        raise StartupError(
            f"cannot reach the master shard at {path} ({e.details}); is it running, and does it speak "
            "generate.v3? (Server does not support v3 interface)"
        ) from e


# ---- logging ---------------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": self.formatTime(record), "level": record.levelname, "target": record.name,
            "fields": {"message": record.getMessage()},
        }
        if record.exc_info:
            out["fields"]["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(json_output: bool) -> None:
    handler = logging.StreamHandler(sys.stdout)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(JsonFormatter() if json_output else logging.Formatter(fmt))
    level = env.log_level()
    logging.basicConfig(level=level if level in ("DEBUG", "INFO", "WARNING", "WARN", "ERROR") else "INFO",
                        handlers=[handler])


EXIT_CONFIG = 2  # a startup error that a restart cannot fix (the launcher does not restart the router)


def startup_exit_code(e: Exception) -> int:
    """1 when the shard could not be reached (it may be restarting: worth a retry), else EXIT_CONFIG."""
    shard_error = e if isinstance(e, ShardError) else e.__cause__
    unreachable = isinstance(shard_error, ShardError) and shard_error.code == "UNAVAILABLE"
    return 1 if unreachable else EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.json_output)
    try:
        return event_loop.run(serve(args))
    except (StartupError, ShardError, ValueError) as e:
        log.error("router failed to start: %s", e)
        return startup_exit_code(e)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
