"""Paged KV block manager: which physical slots hold which sequence's tokens (torch-free).

PagedAttention (Kwon et al., 2023) bookkeeping, extended with *tree slots*: during verification
a sequence with ``L`` committed tokens writes its ``N`` tree nodes at logical positions
``L .. L+N-1``; after acceptance the path is copied down to ``L+1 .. L+k`` and every block past
the new length goes back to the pool. Allocations are all-or-nothing, so running out of blocks
never leaves a sequence half-grown (the caller may preempt and retry later).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from specgrove.errors import ResourceExhausted


@dataclass(frozen=True)
class KVCacheConfig:
    """Geometry of a paged KV cache: ``num_blocks`` blocks of ``block_size`` token slots."""

    block_size: int = 16
    num_blocks: int = 1024
    shuffle_seed: int | None = None  # hand out physical blocks in random order (testing)


class KVCacheExhausted(ResourceExhausted):
    """Not enough free blocks for a requested allocation (nothing was allocated)."""


@dataclass
class _SeqBlocks:
    blocks: list[int] = field(default_factory=list)
    committed: int = 0  # tokens whose K/V is final: logical positions [0, committed)
    reserved: int = 0  # logical positions [0, reserved) are backed by blocks for this step


@dataclass(frozen=True)
class CommitPlan:
    """Slot copies that move an accepted path into place (physical slots)."""

    src_slots: list[int]
    dst_slots: list[int]


class BlockManager:
    @staticmethod
    def of(cfg: KVCacheConfig) -> "BlockManager":
        return BlockManager(cfg.num_blocks, cfg.block_size, cfg.shuffle_seed)

    def __init__(self, num_blocks: int, block_size: int, shuffle_seed: int | None = None) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Pop from the end: the lowest ids are handed out first. A shuffle seed hands them out
        # in a random order instead (tests use it to prove nothing assumes contiguous blocks).
        self._free = list(range(num_blocks - 1, -1, -1))
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(self._free)
        self._seqs: dict[int, _SeqBlocks] = {}

    # --- capacity -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- per sequence -----------------------------------------------------------------------
    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._seqs

    def committed_len(self, seq_id: int) -> int:
        return self._seqs[seq_id].committed

    def block_table(self, seq_id: int) -> list[int]:
        return list(self._seqs[seq_id].blocks)

    def slots(self, seq_id: int, start: int, end: int) -> list[int]:
        """Physical slots of logical positions [start, end); must be reserved."""
        seq = self._seqs[seq_id]
        if end > seq.reserved:
            raise IndexError(f"positions up to {end} requested but only {seq.reserved} reserved")
        bs = self.block_size
        return [seq.blocks[p // bs] * bs + p % bs for p in range(start, end)]

    def add_sequence(self, seq_id: int) -> None:
        if seq_id in self._seqs:
            raise KeyError(f"sequence {seq_id} already has KV blocks")
        self._seqs[seq_id] = _SeqBlocks()

    def reserve(self, seq_id: int, num_new: int) -> None:
        """Back logical positions [committed, committed + num_new) with blocks (atomic)."""
        seq = self._seqs[seq_id]
        self._grow(seq, seq.committed + num_new)

    def commit(self, seq_id: int, num_tokens: int, path: list[int] | None = None) -> CommitPlan:
        """Make ``num_tokens`` more tokens final and drop the rest of the reservation.

        ``path`` lists, for a tree step, the tree-node indices that become committed positions
        ``committed + 0 .. committed + len(path) - 1`` (node 0 first); nodes already in place
        need no copy. Returns the copies the caller must apply to the cache *before* any
        further write, then trims blocks past the new length.
        """
        seq = self._seqs[seq_id]
        base = seq.committed
        if base + num_tokens > seq.reserved:
            raise ValueError(f"commit of {num_tokens} tokens exceeds the reservation")
        plan = CommitPlan([], [])
        if path is not None:
            if len(path) != num_tokens:
                raise ValueError("path length must equal the number of committed tokens")
            moves = [(base + n, base + d) for d, n in enumerate(path) if n != d]
            if moves:
                src, dst = zip(*moves)
                plan = CommitPlan(self._to_slots(seq, src), self._to_slots(seq, dst))
        seq.committed = base + num_tokens
        self._shrink(seq, seq.committed)
        return plan

    def rollback(self, seq_id: int) -> None:
        """Drop an uncommitted reservation (e.g. a failed step)."""
        seq = self._seqs[seq_id]
        self._shrink(seq, seq.committed)

    def free(self, seq_id: int) -> None:
        seq = self._seqs.pop(seq_id, None)
        if seq is not None:
            self._free.extend(reversed(seq.blocks))

    # --- internals -------------------------------------------------------------------------
    def _to_slots(self, seq: _SeqBlocks, positions) -> list[int]:
        bs = self.block_size
        return [seq.blocks[p // bs] * bs + p % bs for p in positions]

    def _grow(self, seq: _SeqBlocks, num_tokens: int) -> None:
        need = self.blocks_for(num_tokens) - len(seq.blocks)
        if need > len(self._free):
            raise KVCacheExhausted(
                f"need {need} more KV blocks but only {len(self._free)} are free"
            )
        for _ in range(need):
            seq.blocks.append(self._free.pop())
        seq.reserved = max(seq.reserved, num_tokens)

    def _shrink(self, seq: _SeqBlocks, num_tokens: int) -> None:
        keep = self.blocks_for(num_tokens)
        while len(seq.blocks) > keep:
            self._free.append(seq.blocks.pop())
        seq.reserved = num_tokens
