"""Batched tree attention over a paged KV cache.

One call attends the new tokens of many sequences at once. Each sequence ``b`` owns the keys at
logical positions ``[0, kv_lens[b])``, stored in fixed-size pages listed by its block table. Its
queries are the rows ``q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]``; their own K/V has already been
written into the cache (so a query always finds itself among the keys).

Which keys a query sees:

* ``tree_mask is None`` -- causal: the ``q_len`` queries are the last ``q_len`` key positions, in
  order, and query ``j`` sees keys ``[0, kv_len - q_len + j]``. This serves prefill (chunked or
  not) and plain one-token decoding.
* ``tree_mask`` given -- the last ``w = tree_lens[b]`` key positions of the sequence form its tree
  window (tree nodes written in topological order). Every query sees all keys before the window;
  query row ``t`` sees window key ``m`` iff ``tree_mask[t, m]``. This is token-tree verification
  (SpecInfer, Miao et al. 2023; Medusa, Cai et al. 2024): node ``i`` attends to the committed
  prefix plus its own ancestors, although siblings share a RoPE position.

The window may be longer than the queries (a draft model expanding a tree one depth at a time
queries only the newest depth while earlier depths already sit in the cache).

Triton kernel: issue "Triton kernels" adds ``tree_attention`` with this exact signature.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def tree_attention_ref(
    q: torch.Tensor,  # [T, Hq, D] queries of all sequences, flattened
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_blocks] int32, physical block ids
    kv_lens: torch.Tensor,  # [B] int32, keys visible per sequence (prefix + window)
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32, query offsets into q
    tree_mask: torch.Tensor | None,  # [T, W] bool, row t = visible window keys of query t
    tree_lens: torch.Tensor | None,  # [B] int32, window length per sequence (<= W)
    scale: float,
) -> torch.Tensor:  # [T, Hq, D]
    """Plain-torch reference: gather each sequence's keys, mask, and run SDPA (GQA aware)."""
    block_size = k_cache.shape[1]
    k_flat = k_cache.reshape(-1, *k_cache.shape[2:])  # [num_slots, Hkv, D]
    v_flat = v_cache.reshape(-1, *v_cache.shape[2:])
    out = torch.empty_like(q)
    starts = cu_seqlens_q.tolist()
    lens = kv_lens.tolist()
    windows = tree_lens.tolist() if tree_lens is not None else None
    for b, kv_len in enumerate(lens):
        s, e = starts[b], starts[b + 1]
        if e == s:
            continue
        pos = torch.arange(kv_len, device=q.device)
        slots = block_tables[b, pos // block_size].long() * block_size + pos % block_size
        k = k_flat[slots].transpose(0, 1).unsqueeze(0)  # [1, Hkv, kv_len, D]
        v = v_flat[slots].transpose(0, 1).unsqueeze(0)
        mask = _visible_keys(e - s, kv_len, tree_mask, s, windows[b] if windows else 0, q.device)
        qb = q[s:e].transpose(0, 1).unsqueeze(0)  # [1, Hq, q_len, D]
        ob = F.scaled_dot_product_attention(
            qb, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != qb.shape[1]
        )
        out[s:e] = ob[0].transpose(0, 1)
    return out


def _visible_keys(
    q_len: int, kv_len: int, tree_mask: torch.Tensor | None, row0: int, window: int, device
) -> torch.Tensor | None:
    """Boolean [q_len, kv_len] mask of the keys each query sees; None when it sees them all."""
    if tree_mask is None:
        if q_len == 1:
            return None
        # Query j sits at key position kv_len - q_len + j.
        return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    mask[:, kv_len - window :] = tree_mask[row0 : row0 + q_len, :window]
    return mask
