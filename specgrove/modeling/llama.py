"""The llama family -- Llama (Touvron et al. 2023), Mistral (Jiang et al. 2023), Qwen2
(QKV bias) -- as one decoder: pre-norm RMSNorm, RoPE, grouped-query attention (Ainslie et al.
2023) over the paged KV cache, SwiGLU MLP (Shazeer 2020). Written plainly in the style of
gpt-fast, with tensor parallelism added by sharding the linear layers.
"""
from __future__ import annotations

import torch
from torch import nn

from specgrove.kernels.backend import KernelBackend
from specgrove.kernels.cpu_elementwise import silu_mul_ref
from specgrove.modeling.attention import AttentionMetadata, PagedAttention
from specgrove.modeling.config import ModelConfig
from specgrove.modeling.layers import RMSNorm, RotaryEmbedding
from specgrove.modeling.parallel import (
    ColumnParallelLinear,
    ParallelLMHead,
    LayerContext,
    RowParallelLinear,
    VocabParallelEmbedding,
)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig, ctx: LayerContext) -> None:
        super().__init__()
        size = cfg.intermediate_size
        self.gate_up_proj = ColumnParallelLinear(cfg.hidden_size, (size, size), False, ctx)
        self.down_proj = RowParallelLinear(size, cfg.hidden_size, ctx)
        self.act = silu_mul_ref  # [T, 2I] -> SiLU(gate) * up [T, I]; a fused CPU kernel in bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, ctx: LayerContext, backend: KernelBackend) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ctx.dtype)
        self.self_attn = PagedAttention(cfg, ctx, backend)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ctx.dtype)
        self.mlp = SwiGLU(cfg, ctx)

    def forward(self, x, rope, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, kv_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, ctx: LayerContext, backend: KernelBackend) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, ctx)
        self.layers = nn.ModuleList(DecoderLayer(cfg, ctx, backend) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ctx.dtype)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_positions, cfg.rope, ctx.dtype)


class LlamaForCausalLM(nn.Module):
    """``forward`` returns hidden states; ``logits`` projects only the rows that need them."""

    def __init__(self, cfg: ModelConfig, ctx: LayerContext, backend: KernelBackend) -> None:
        super().__init__()
        self.config = cfg
        self.tp = ctx.tp
        self.model = LlamaModel(cfg, ctx, backend)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, ctx)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def kv_heads_per_rank(self) -> int:
        return self.config.num_kv_heads // self.tp.size

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] int64
        positions: torch.Tensor,  # [T] int64
        kv_cache: torch.Tensor,  # [num_layers, 2, num_blocks, block_size, Hkv_local, D]
        meta: AttentionMetadata,
        capture=None,  # a runner.FeatureCapture: keep some layers' outputs (drafter features)
    ) -> torch.Tensor:  # [T, hidden]
        x = self.model.embed_tokens(input_ids)
        rope = self.model.rotary(positions)  # looked up once, shared by every layer
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, kv_cache[i], meta)
            if capture is not None and i in capture.layers:
                capture.taken.append(x[capture.rows])
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [T, hidden] -> [T, vocab]
        return self.lm_head(hidden)
