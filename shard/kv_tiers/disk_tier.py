"""The disk tier: one file per slot under a directory, bounded by its slot count.

File layout (little-endian): a 32-byte header, then the block's raw bytes (layers, 2, block_size, kv_heads,
head_dim in the KV dtype)::

    magic b"PRISMKV1" | block_hash u64 | payload length u64 | CRC32 of the payload u32 | 4 bytes zero

A read returns None (a miss, never garbage) when the file is missing, shorter or longer than the header says,
has another magic, another block hash (a foreign or stale file) or another checksum (corrupt). A write goes to
a temporary file renamed over the slot's file, so a crash never leaves a half-written file under a slot's
name; a write that fails (disk full, I/O error) removes what it wrote and returns False.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import torch

log = logging.getLogger(__name__)
MAGIC = b"PRISMKV1"
HEADER = struct.Struct("<8sQQI4x")
PREFIX = "kvblock-"


class DiskTier:
    def __init__(self, path: str, num_blocks: int, block_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.dir = Path(path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.num_blocks, self.block_shape, self.dtype = num_blocks, block_shape, dtype
        self.payload_bytes = torch.empty(block_shape, dtype=dtype).numel() * dtype.itemsize
        # NOTE: the router's tree starts empty, so files of an earlier run are never read: remove ours (only
        # names this tier writes) so that the directory's size stays within num_blocks files.
        for f in self.dir.glob(f"{PREFIX}*"):
            f.unlink(missing_ok=True)

    def file(self, slot: int) -> Path:
        return self.dir / f"{PREFIX}{slot:08d}.bin"

    def write(self, slot: int, block_hash: int, block: torch.Tensor) -> bool:
        """Store ``block`` (any device) in ``slot``; False when the disk refused (nothing left behind)."""
        payload = block.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
        header = HEADER.pack(MAGIC, block_hash & (2**64 - 1), len(payload), zlib.crc32(payload))
        final = self.file(slot)
        tmp = final.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(header)
                f.write(payload)
            os.replace(tmp, final)
            return True
        except OSError as err:
            log.warning("disk tier: writing slot %d failed (%s); the block is not kept on disk", slot, err)
            tmp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)  # NOTE: the slot's old content is stale now: never serve it
            return False

    def read(self, slot: int, block_hash: int) -> torch.Tensor | None:
        """The block stored in ``slot`` under ``block_hash`` (a CPU tensor), or None: a miss."""
        try:
            raw = self.file(slot).read_bytes()
        except OSError:
            return None
        why = self._invalid(raw, block_hash)
        if why is not None:
            log.warning("disk tier: slot %d is %s; treated as a miss", slot, why)
            return None
        payload = bytearray(raw[HEADER.size :])
        return torch.frombuffer(payload, dtype=torch.uint8).view(self.dtype).reshape(self.block_shape)

    def _invalid(self, raw: bytes, block_hash: int) -> str | None:
        if len(raw) < HEADER.size:
            return "truncated (no header)"
        magic, stored_hash, length, crc = HEADER.unpack_from(raw)
        if magic != MAGIC:
            return "not a KV block file"
        if stored_hash != block_hash & (2**64 - 1):
            return "another block's (foreign or stale)"
        if length != self.payload_bytes or len(raw) - HEADER.size != length:
            return "truncated or of another shape"
        if zlib.crc32(memoryview(raw)[HEADER.size :]) != crc:
            return "corrupt (checksum mismatch)"
        return None
