"""Runs steps of a batch: validate, build inputs, one forward through the paged pool, choose tokens, emit.

The decode forward is ONE callable over static-shaped tensors (:meth:`ModelRunner.decode_forward`) so that
``shard.cuda_graphs.CudaGraphRunner`` can capture it on CUDA; the model never knows whether it is captured.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from shard.batch import RequestState
from shard import grammar
from shard.chunking import plan_chunks
from shard.cpu_affinity import TeamPinning
from shard.detokenize import Detokenizer
from shard.generation import FinishedText, GenerationOut, TokensOut
from shard.inputs import StepInputs, build_step_inputs, to_device
from shard.kv_cache import KVCache
from shard.layers.attention import AttentionMetadata
from shard.layers.packed_linear import warm_prefill_linears
from shard.loader import LoadedModel
from shard.sampling import Choice
from shard.sampling_batch import choose_batch, choose_one, device_safe
from shard.validation import PoolLimits, check_step

log = logging.getLogger(__name__)
GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


PREFILL_THREADS_MIN_TOKENS = 256


@dataclass(frozen=True)
class CpuThreads:
    """torch intra-op threads per step on CPU: ``large`` for steps of at least PREFILL_THREADS_MIN_TOKENS
    tokens (counted by :func:`step_size`) or whose decode rows read at least ``decode_kv_min`` bytes of KV
    (:func:`decode_kv_bytes`; 0: never for that reason), ``small`` for the others (see
    :func:`shard.factory.pick_cpu_threads`)."""

    small: int
    large: int
    cpus: tuple[int, ...] = ()  # large team's thread i on cpus[i] (shard.cpu_affinity); (): unpinned
    decode_kv_min: int = 0

    def __str__(self) -> str:
        if self.small == self.large:
            return str(self.small)
        kv = f" or decode reading {self.decode_kv_min >> 20} MiB of KV" if self.decode_kv_min else ""
        return f"{self.small} (steps under {PREFILL_THREADS_MIN_TOKENS} tokens) / {self.large} (larger steps{kv})"

    def for_tokens(self, tokens: int, decode_kv: int = 0) -> int:
        """``tokens``: :func:`step_size`; ``decode_kv``: :func:`decode_kv_bytes`."""
        if tokens >= PREFILL_THREADS_MIN_TOKENS or 0 < self.decode_kv_min <= decode_kv:
            return self.large
        return self.small


def step_size(requests: list[RequestState], hidden: int) -> int:
    """A step's work in tokens, for :meth:`CpuThreads.for_tokens`: its new tokens, plus the attention of
    prompt pieces over their cached prefix. One (query, cached key) pair costs about 1 / (6 * hidden) of a
    token's matmuls (2 * hidden multiply-adds against about 12 * hidden**2 for a Llama layer's projections
    and MLP), so a 208-token piece after 1,840 cached tokens counts as 457 tokens at hidden 256. Decode rows
    count one each: the KV they read is :func:`decode_kv_bytes`' (a decode key is read from memory, not
    multiplied on tiles, so it does not fit this scale)."""
    attention = sum(r.next_len * r.cache_len for r in requests if not r.prompt_done)
    return sum(r.next_len for r in requests) + attention // (6 * hidden)


def decode_kv_bytes(requests: list[RequestState], bytes_per_token: int) -> int:
    """The KV a step's decode rows read: their cached tokens' K and V over all layers (``bytes_per_token``)."""
    return bytes_per_token * sum(r.cache_len for r in requests if r.prompt_done)


@dataclass
class StepTimes:
    forward_ns: int = 0
    decode_ns: int = 0


@dataclass
class StepLogits:
    """fp32 CPU logits of the rows the step needs: ``values[row_index[row]]`` for flat row ``row``."""

    values: torch.Tensor
    row_index: dict[int, int] = field(default_factory=dict)

    def row(self, row: int) -> torch.Tensor:
        return self.values[self.row_index[row]]


class ModelRunner:
    """Owns the model, the KV pool and the detokenizer; stateless across batches otherwise."""

    def __init__(
        self,
        loaded: LoadedModel,
        kv: KVCache,
        enforce_eager: bool = True,
        cpu_threads: CpuThreads | None = None,
        graph_sizes: tuple[int, ...] | None = None,
    ) -> None:
        self.loaded, self.kv = loaded, kv
        self.cpu_threads = cpu_threads  # None: leave torch's thread count alone (CUDA, tests)
        self._pinning = TeamPinning(cpu_threads.cpus if cpu_threads is not None else ())
        self.model = loaded.model
        self.detok = Detokenizer(loaded.tokenizer)
        self.enforce_eager = enforce_eager
        self.graph_sizes = graph_sizes or GRAPH_BATCH_SIZES
        self.device_choice = True  # plain greedy decode rows chosen on the model's device (benchmarks switch it)
        self.max_input_tokens: int | None = None
        self.max_prefill_tokens: int | None = None  # per forward, from Warmup (shard.chunking)
        self.graphs = None  # CudaGraphRunner once captured

    @property
    def limits(self) -> PoolLimits:
        return PoolLimits(
            self.kv.num_blocks, self.kv.block_size, self.loaded.max_position_embeddings, self.max_input_tokens
        )

    # ---- forward -------------------------------------------------------------------------------------------

    def decode_forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        block_tables: torch.Tensor,
        seqlens_k: torch.Tensor,
        max_seqlen_k: int | None = None,
    ) -> torch.Tensor:
        """One token per request -> logits (b, vocab) fp32.

        Args: input_ids (b,) int64, positions (b,) int64, slots (b,) int64, block_tables (b, mb) int32,
        seqlens_k (b,) int32; max_seqlen_k: host int bound on seqlens_k, default the static mb * block_size
        (graph-safe; eager steps pass the real maximum so the CPU kernels read no padding).
        """
        bound = block_tables.shape[1] * self.kv.block_size if max_seqlen_k is None else max_seqlen_k
        meta = AttentionMetadata(positions, slots, block_tables, seqlens_k, None, 1, bound)
        return self.model.logits(self.model(input_ids, meta, self.kv.layers))

    def _decode_logits(self, ids: torch.Tensor, m: AttentionMetadata) -> torch.Tensor:
        # NOTE: the graph runner pads to a captured size and itself runs eagerly what it cannot replay.
        if self.graphs is not None:
            return self.graphs(ids, m.positions, m.slots, m.block_tables, m.seqlens_k)
        return self.decode_forward(ids, m.positions, m.slots, m.block_tables, m.seqlens_k, m.max_seqlen_k)

    def _forward(self, s: StepInputs, rows: list[int], requests: list[RequestState]) -> StepLogits:
        ids, meta = to_device(s, self.loaded.device, self.kv.block_size)
        if s.is_decode:
            logits = self._decode_logits(ids, meta).float()
            # NOTE: plain greedy rows are chosen where the logits are: on a GPU, copying (b, vocab) to the host
            # and a host softmax over it cost a large share of a decode step at a 128k vocabulary.
            if logits.device.type != "cpu" and not (self.device_choice and self._device_choosable(requests)):
                logits = logits.cpu()
            return StepLogits(logits, {r: r for r in range(len(s.input_ids))})
        hidden = self.model(ids, meta, self.kv.layers)
        picked = hidden[torch.tensor(rows, dtype=torch.int64, device=hidden.device)]
        return StepLogits(self.model.logits(picked).float().cpu(), {r: i for i, r in enumerate(rows)})

    # ---- one step ------------------------------------------------------------------------------------------

    def step(self, requests: list[RequestState]) -> tuple[list[GenerationOut], StepTimes]:
        """Compute ``r.next_len`` tokens of every request; a Generation for each request whose prompt is done.

        Raises:
            InvalidRequest: a position without a slot / beyond RoPE, or two requests writing one slot.
                Nothing is written and no request state changes in that case.
        """
        plan_chunks(requests, self.max_prefill_tokens)
        active = [r for r in requests if r.next_len > 0]
        check_step(active, self.limits)
        inputs = build_step_inputs(active)
        if self.cpu_threads is not None:
            # NOTE: per calling thread (OpenMP); steps run on shard.step_thread, so set it here.
            want = self.cpu_threads.for_tokens(step_size(active, self.model.config.hidden),
                                               decode_kv_bytes(active, self.kv.shape.bytes_per_token))
            if torch.get_num_threads() != want:
                torch.set_num_threads(want)
            self._pinning.maybe_pin(want)
        t0 = time.perf_counter_ns()
        with torch.inference_mode():
            logits = self._forward(inputs, self._rows_needed(active, inputs), active)
        t1 = time.perf_counter_ns()
        grammar.apply_masks(active, inputs.cu_seqlens_q, logits)
        out = self._after_forward(active, inputs, logits)
        grammar.advance(active, out)
        plan_chunks(requests, self.max_prefill_tokens)  # so that current_tokens reports the next forward
        return out, StepTimes(t1 - t0, time.perf_counter_ns() - t1)

    def plan_next(self, requests: list[RequestState]) -> None:
        """Re-plan the next forward's prompt pieces (after the batch changed, e.g. FilterBatch)."""
        plan_chunks(requests, self.max_prefill_tokens)

    @staticmethod
    def _device_choosable(requests: list[RequestState]) -> bool:
        return all(r.grammar is None for r in requests) and device_safe([r.chooser for r in requests])

    @staticmethod
    def _rows_needed(requests: list[RequestState], s: StepInputs) -> list[int]:
        rows: list[int] = []
        for r, start, end in zip(requests, s.cu_seqlens_q, s.cu_seqlens_q[1:]):
            if r.prefill_logprobs and not r.prompt_done:
                rows.extend(range(start, end))
            elif r.cache_len + (end - start) >= r.prompt_len:
                rows.append(end - 1)
        return rows

    def _after_forward(
        self, requests: list[RequestState], s: StepInputs, logits: StepLogits
    ) -> list[GenerationOut]:
        """Advance every request; choose the next token of those whose prompt is done, all rows at once.

        A failure confined to one request (its sampling, detokenization, stop check) ends only that request:
        its Generation carries ``error`` and the others go on.
        """
        out: list[GenerationOut] = []
        ready: list[tuple[RequestState, int]] = []
        for r, start, end in zip(requests, s.cu_seqlens_q, s.cu_seqlens_q[1:]):
            try:
                if r.prefill_logprobs and not r.prompt_done:
                    self._record_prompt_logprobs(r, logits, start, end)
            except Exception as err:  # NOTE: isolate one request's failure from the batch
                out.append(self._failed(r, err))
                continue
            r.advance(end - start)
            if r.prompt_done:
                ready.append((r, logits.row_index[end - 1]))
        if not ready:
            return out
        choices = self._choose(ready, logits)
        for (r, _), choice in zip(ready, choices):
            try:
                if isinstance(choice, Exception):
                    raise choice
                out.append(self._emit(r, choice))
            except Exception as err:  # NOTE: isolate one request's failure from the batch
                out.append(self._failed(r, err))
        return out

    @staticmethod
    def _choose(ready: list[tuple[RequestState, int]], logits: StepLogits) -> list[Choice | Exception]:
        """Batched choice; if the batched code itself raises, each row is retried alone so that only the
        request at fault fails."""
        picked = [row for _, row in ready]
        if picked == list(range(logits.values.shape[0])):  # a decode step: every row, in order (no copy)
            rows = logits.values
        else:
            rows = logits.values[torch.tensor(picked, dtype=torch.int64)]
        choosers = [r.chooser for r, _ in ready]
        try:
            return list(choose_batch(choosers, rows, [r.token_ids for r, _ in ready]))
        except Exception:
            log.exception("batched sampling failed; choosing row by row")
        out: list[Choice | Exception] = []
        for i, (r, _) in enumerate(ready):
            try:
                out.append(choose_one(r.chooser, rows[i], r.token_ids))
            except Exception as err:
                out.append(err)
        return out

    @staticmethod
    def _failed(r: RequestState, err: Exception) -> GenerationOut:
        log.warning("request %d failed alone: %s: %s", r.id, type(err).__name__, err)
        return GenerationOut(r.id, TokensOut(), error=f"{type(err).__name__}: {err}")

    @staticmethod
    def _record_prompt_logprobs(r: RequestState, logits: StepLogits, start: int, end: int) -> None:
        """Logits at position p score prompt token p + 1: its logprob and rank; cached positions keep NaN and 0
        (never computed here). With ``top_n_tokens``, also each scored position's likeliest tokens (finite
        logprobs only)."""
        first = r.cache_len
        count = min(end - start, r.prompt_len - 1 - first)  # the last prompt row scores a generated token
        if count <= 0:
            return
        rows = torch.tensor([logits.row_index[row] for row in range(start, start + count)])
        targets = torch.tensor(r.token_ids[first + 1 : first + 1 + count])
        logprobs = torch.log_softmax(logits.values[rows], -1)
        own = logprobs.gather(1, targets[:, None])
        r.prompt_logprobs[first + 1 : first + 1 + count] = own[:, 0].tolist()
        r.prompt_ranks[first + 1 : first + 1 + count] = ((logprobs > own).sum(1) + 1).tolist()
        if r.top_n_tokens <= 0:
            return
        values, ids = torch.topk(logprobs, min(r.top_n_tokens, logprobs.shape[1]))
        for i, (row_values, row_ids) in enumerate(zip(values.tolist(), ids.tolist())):
            kept = [k for k, v in enumerate(row_values) if math.isfinite(v)]
            r.prompt_tops[first + 1 + i] = ([row_ids[k] for k in kept], [row_values[k] for k in kept])

    def _emit(self, r: RequestState, choice: Choice) -> GenerationOut:
        r.token_ids.append(choice.token_id)
        text, r.prefix_offset, r.read_offset = self.detok.next_text(
            r.token_ids, r.prefix_offset, r.read_offset
        )
        reason = r.stopping(choice.token_id, text)
        tokens = TokensOut(
            [choice.token_id], [choice.logprob], [text], [self.detok.is_special(choice.token_id)]
        )
        g = GenerationOut(r.id, tokens)
        if r.prefill_logprobs and not r.prefill_emitted:
            g.prefill_tokens, g.prefill_ranks = self._prefill_tokens(r), list(r.prompt_ranks)
            if r.top_n_tokens > 0:
                tops = (r.prompt_tops.get(p, ([], [])) for p in range(r.prompt_len))
                g.prefill_top_tokens = [self._tokens_out(ids, logprobs) for ids, logprobs in tops]
        r.prefill_emitted = True
        if r.top_n_tokens > 0:
            g.top_tokens = [self._top_tokens(choice.logprobs, r.top_n_tokens)]
        if reason is not None:
            seed = r.chooser.params.seed if r.chooser.params.samples else None
            ids = r.generated_ids
            if r.stopping.stop_token_hit:  # NOTE: vLLM leaves a stop token's text out of the output
                tokens.texts[0], ids = "", ids[:-1]
            g.finished = FinishedText(self.detok.text(ids), r.stopping.generated, reason, seed)
        return g

    def _prefill_tokens(self, r: RequestState) -> TokensOut:
        """The prompt's tokens and logprobs (the first NaN); ``is_special`` filled too, which TGI leaves empty,
        so that an echoed prompt's special tokens read as they do in its text (none)."""
        return self._tokens_out(r.token_ids[: r.prompt_len], list(r.prompt_logprobs))

    def _tokens_out(self, ids: list[int], logprobs: list[float]) -> TokensOut:
        texts = [self.detok.token_text(i) for i in ids]
        return TokensOut(ids, logprobs, texts, [self.detok.is_special(i) for i in ids])

    def _top_tokens(self, logprobs: torch.Tensor, n: int) -> TokensOut:
        """The ``n`` likeliest tokens, less those a grammar or a warper ruled out: their logprob is -inf, no
        candidate at all, and not a number JSON can carry."""
        values, ids = torch.topk(logprobs, min(n, logprobs.numel()))
        finite = torch.isfinite(values)
        values, ids = values[finite], ids[finite]
        return self._tokens_out(ids.tolist(), values.tolist())

    def warm_prefill(self, max_rows: int) -> None:
        """Build oneDNN's primitives for prompt pieces of up to ``max_rows`` rows now, at the prefill steps'
        thread count (:func:`shard.layers.packed_linear.warm_prefill_linears`), not in a live step. CPU only;
        run it on the step thread."""
        if self.cpu_threads is None:
            return
        torch.set_num_threads(self.cpu_threads.large)
        self._pinning.maybe_pin(self.cpu_threads.large)
        warmed = warm_prefill_linears(self.model, max_rows)
        if warmed:
            log.info("linears warmed for %d prompt piece sizes up to %d rows", warmed, max_rows)

    # ---- CUDA graphs ---------------------------------------------------------------------------------------

    def maybe_capture_graphs(self, max_total_tokens: int) -> None:
        """On CUDA without --enforce-eager, capture the decode forward (eager without shard.cuda_graphs)."""
        if self.enforce_eager or self.loaded.device.type != "cuda" or self.graphs is not None:
            return
        if self.model.model.layers[0].self_attn.backend.name == "reference":
            log.info("the reference attention backend cannot be captured; decoding eagerly")
            return
        try:
            from shard.cuda_graphs import CudaGraphRunner
        except ImportError:
            log.warning("shard.cuda_graphs not available; decoding eagerly")
            return
        max_blocks = -(-max_total_tokens // self.kv.block_size)
        runner = CudaGraphRunner(self.decode_forward, list(self.graph_sizes), max_blocks, self.loaded.device)
        runner.capture()
        self.graphs = runner
