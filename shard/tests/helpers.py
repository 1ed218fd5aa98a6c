"""Building generate.v3 requests in tests, with a trivial block allocator standing in for the router."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from proto.generate.v3 import generate_pb2 as pb
from shard.config import ShardConfig

BLOCK = 16


def make_config(
    model_dir: Path,
    uds_path: str = "/tmp/prism-shard-test",
    num_blocks: int = 256,
    attention_backend: str = "reference",
    dtype: str = "float32",
    device: str = "cpu",
    rope_factor: float | None = None,
) -> ShardConfig:
    """A CPU shard, fp32 on the reference attention backend unless told otherwise."""
    return ShardConfig(
        model_dir=str(model_dir),
        uds_path=uds_path,
        dtype=dtype,
        device=device,
        attention_backend=attention_backend,
        num_blocks=num_blocks,
        block_size=BLOCK,
        rope_factor=rope_factor,
    )


@dataclass
class Blocks:
    """Hands out consecutive fresh blocks from 1 (block 0 is reserved, as in TGI)."""

    next_block: int = 1
    block_size: int = BLOCK
    taken: list[int] = field(default_factory=list)

    def take(self, tokens: int) -> tuple[list[int], list[int]]:
        """(blocks, slots) for ``tokens`` positions."""
        count = -(-tokens // self.block_size)
        blocks = list(range(self.next_block, self.next_block + count))
        self.next_block += count
        return blocks, slots_of(blocks, tokens, self.block_size)


def slots_of(blocks: list[int], tokens: int, block_size: int = BLOCK) -> list[int]:
    return [b * block_size + o for b in blocks for o in range(block_size)][:tokens]


def request(
    rid: int, text: str, blocks: list[int], slots: list[int], max_new: int = 8, **extra
) -> pb.Request:
    """A greedy request; ``extra`` sets other Request fields (cache_len, chunk_len, prefill_logprobs, ...)."""
    params = extra.pop(
        "parameters",
        pb.NextTokenChooserParameters(temperature=1.0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0),
    )
    stopping = extra.pop(
        "stopping", pb.StoppingCriteriaParameters(max_new_tokens=max_new, ignore_eos_token=True)
    )
    return pb.Request(
        id=rid,
        input_chunks=pb.Input(chunks=[pb.InputChunk(text=text)]),
        inputs=text,
        parameters=params,
        stopping_parameters=stopping,
        blocks=blocks,
        slots=slots,
        add_special_tokens=True,
        **extra,
    )


def batch(bid: int, requests: list[pb.Request]) -> pb.Batch:
    return pb.Batch(
        id=bid,
        requests=requests,
        size=len(requests),
        max_tokens=sum(len(r.slots) for r in requests),
        max_blocks=max(len(r.blocks) for r in requests),
    )


async def run_to_end(
    service, prefill: pb.PrefillRequest, max_steps: int = 200, filter_finished: bool = False
) -> dict[int, list[pb.Generation]]:
    """Prefill then Decode until the shard drops the batch; every Generation per request id, in order.
    ``filter_finished``: after each step, FilterBatch the finished requests out (as the router does)."""
    out: dict[int, list[pb.Generation]] = {}
    resp = await service.Prefill(prefill, None)
    for _ in range(max_steps):
        for g in resp.generations:
            out.setdefault(g.request_id, []).append(g)
        if not resp.HasField("batch"):
            return out
        cached = resp.batch
        done = {g.request_id for g in resp.generations if g.HasField("generated_text")}
        if filter_finished and done:
            keep = [i for i in cached.request_ids if i not in done]
            request = pb.FilterBatchRequest(batch_id=cached.id, request_ids=keep)
            cached = (await service.FilterBatch(request, None)).batch
        resp = await service.Decode(pb.DecodeRequest(batches=[cached]), None)
    raise AssertionError(f"batch still running after {max_steps} steps")


def token_ids(generations: list[pb.Generation]) -> list[int]:
    return [t for g in generations for t in g.tokens.ids]
