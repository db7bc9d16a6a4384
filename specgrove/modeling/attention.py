"""Per-forward attention metadata and the paged, tree-aware attention layer."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from specgrove.kernels.backend import KernelBackend
from specgrove.modeling.config import ModelConfig
from specgrove.modeling.layers import apply_rope
from specgrove.modeling.parallel import ColumnParallelLinear, LayerContext, RowParallelLinear


@dataclass(frozen=True)
class AttentionMetadata:
    """Where this forward's tokens live and what they see; built once, shared by all layers.

    See ``specgrove/kernels/tree_attention.py`` for the exact visibility rule.
    """

    slot_mapping: torch.Tensor  # [T] int64, physical slot each new token's K/V is written to
    block_tables: torch.Tensor  # [B, max_blocks] int32
    kv_lens: torch.Tensor  # [B] int32, keys visible per sequence after the write
    cu_seqlens_q: torch.Tensor  # [B + 1] int32, token offsets per sequence
    tree_mask: torch.Tensor | None  # [T, W] bool; None = causal
    tree_lens: torch.Tensor | None  # [B] int32 window length per sequence; None = causal


class PagedAttention(nn.Module):
    """Multi-head attention with GQA over the paged cache; QKV is one column-parallel matmul."""

    def __init__(self, cfg: ModelConfig, ctx: LayerContext, backend: KernelBackend) -> None:
        super().__init__()
        tp = ctx.tp
        if cfg.num_kv_heads % tp.size:
            raise ValueError(
                f"{cfg.num_kv_heads} KV heads cannot be split over tensor-parallel size {tp.size}"
            )
        self.num_heads = cfg.num_heads // tp.size
        self.num_kv_heads = cfg.num_kv_heads // tp.size
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        self.backend = backend
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = ColumnParallelLinear(
            cfg.hidden_size, (q_size, kv_size, kv_size), cfg.qkv_bias, ctx
        )
        self.o_proj = RowParallelLinear(q_size, cfg.hidden_size, ctx)
        self.rope = apply_rope  # [T, H, D], cos, sin -> [T, H, D]; a fused CPU kernel in bf16

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden]
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin: [T, 1, D/2] at each token's position
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, Hkv_local, D]
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split(
            [self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
             self.num_kv_heads * self.head_dim], dim=-1,
        )
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        q, k = self.rope(q, *rope), self.rope(k, *rope)
        self.backend.write_kv(kv_cache[0], kv_cache[1], k, v.contiguous(), meta.slot_mapping)
        out = self.backend.tree_attention(
            q.contiguous(), kv_cache[0], kv_cache[1], meta.block_tables, meta.kv_lens,
            meta.cu_seqlens_q, meta.tree_mask, meta.tree_lens, self.scale,
        )
        return self.o_proj(out.view(t, -1))
