"""Writing K/V into paged slots, and committing an accepted tree path.

Layout of the whole cache (all layers in one tensor so a commit is one call per step):
``kv_cache[num_layers, 2, num_blocks, block_size, Hkv, D]`` where index 0/1 of dim 1 is K/V.
A *slot* is ``block_id * block_size + offset``; slots are physical and come from the block
manager (``specgrove/kv.py``).

Commit (DESIGN "One step", 3): after verification, the accepted path nodes ``a_1 .. a_k`` of a
tree written at logical positions ``L .. L+N-1`` move to ``L+1 .. L+k``. Because a path node's
index is at least its depth, a sequential copy in increasing order never overwrites a source it
still needs; the reference gathers all sources first, which is safe in any order.

Triton kernels: issue "Triton kernels" adds ``write_kv`` and ``commit_kv`` with these signatures.
"""
from __future__ import annotations

import torch


def write_kv_ref(
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D] (one layer)
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64 physical slots
) -> None:
    """Scatter new keys/values into their slots (in place)."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)


def commit_kv_ref(
    kv_cache: torch.Tensor,  # [num_layers, 2, num_blocks, block_size, Hkv, D]
    src_slots: torch.Tensor,  # [C] int64
    dst_slots: torch.Tensor,  # [C] int64
) -> None:
    """Copy K/V of every layer from src to dst slots (in place, all sources read first)."""
    if src_slots.numel() == 0:
        return
    flat = kv_cache.view(kv_cache.shape[0], 2, -1, *kv_cache.shape[4:])
    flat[:, :, dst_slots] = flat[:, :, src_slots]
