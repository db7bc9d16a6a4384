"""The EAGLE head for inference: one paged-KV decoder layer behind the ``ModelExecutor`` contract.

The same llama ``DecoderLayer`` as the target (paged KV, tree attention, the chosen kernel
backend), so a head's frontier of all sequences is expanded in one batched forward per depth,
exactly like the model drafter. ``forward`` takes, per token, its token id and its input feature
(width d: the fused target feature, or the parent's output for drafted tokens) and returns the
layer's output ``h`` [T, d]; ``logits`` maps ``h`` to the draft vocabulary.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from draft_service.drafters.eagle.config import WEIGHTS_FILE, EagleConfig
from specgrove.kernels.backend import KernelBackend
from specgrove.modeling.layers import RMSNorm, RotaryEmbedding
from specgrove.modeling.llama import DecoderLayer
from specgrove.modeling.parallel import ColumnParallelLinear, LayerContext

# Checkpoint names of the layer's sub-matrices -> (our fused parameter, shard index).
_FUSED = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
          "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


class EagleServingModel(nn.Module):
    def __init__(self, cfg: EagleConfig, embed: torch.Tensor, ctx: LayerContext,
                 backend: KernelBackend) -> None:
        """``embed``: the target's token embedding [V, d], shared with the target's weights."""
        super().__init__()
        d = cfg.hidden_size
        self.eagle = cfg
        self.config = cfg.layer_config()  # one layer: what ModelExecutor sizes the KV cache by
        # Parallel linears of one rank: the CPU kernels (``use_cpu_linears``) route them like
        # the decoder layer's, and their loaders honour the weight layout of ``ctx``.
        self.fuse = ColumnParallelLinear(cfg.feature_width, [d], False, ctx)  # [n, W] -> [n, d]
        self.in_proj = ColumnParallelLinear(2 * d, [d], False, ctx)  # [T, 2d] -> [T, d]
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([DecoderLayer(self.config, ctx, backend)])
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_positions, cfg.rope, ctx.dtype)
        self.norm = RMSNorm(d, cfg.rms_norm_eps, ctx.dtype)
        self.lm_head = ColumnParallelLinear(d, [cfg.draft_vocab_size], False, ctx)  # [R, d] -> [R, Vd]
        self.register_buffer("embed", embed.to(ctx.dtype), persistent=False)
        self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.int64))

    @property
    def kv_heads_per_rank(self) -> int:
        return self.config.num_kv_heads

    def fuse_features(self, target_features: torch.Tensor) -> torch.Tensor:
        """[n, feature_width] target hidden states -> [n, d] inputs."""
        return self.fuse(target_features.to(self.embed.dtype))

    def forward(self, input_ids, positions, kv_cache, meta, capture=None, features=None):
        """input_ids, positions: [T]; features: [T, d]; kv_cache: [1, 2, blocks, bs, Hkv, D]."""
        x = self.in_proj(torch.cat([features.to(self.embed.dtype), self.embed[input_ids]], dim=-1))
        return self.model.layers[0](x, self.rotary(positions), kv_cache[0], meta)  # [T, d]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [R, d] -> [R, Vd]
        return self.lm_head(self.norm(hidden))

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Weights saved from a trained ``EagleHead`` (Hugging Face layer names)."""
        params = dict(self.named_parameters())
        for name, tensor in state.items():
            if name == "d2t":
                self.d2t.copy_(tensor)
                continue
            target, shard = name.replace("layer.", "model.layers.0.", 1), 0
            for part, (fused, index) in _FUSED.items():
                if f".{part}." in target:
                    target, shard = target.replace(part, fused), index
            target = {"head.weight": "lm_head.weight"}.get(target, target)
            if target not in params:
                raise ValueError(f"EAGLE weight {name!r} has no place in the serving model")
            param = params[target]
            loader = getattr(param, "weight_loader", None)
            if loader is not None:
                loader(param, tensor, shard)
            else:
                param.data.copy_(tensor)


def load_serving_model(directory: Path, embed: torch.Tensor, ctx: LayerContext,
                       backend: KernelBackend) -> EagleServingModel:
    from safetensors.torch import load_file

    return serving_from_state(EagleConfig.load(directory), load_file(str(directory / WEIGHTS_FILE)),
                              embed, ctx, backend)


def serving_from_state(cfg: EagleConfig, state: dict[str, torch.Tensor], embed: torch.Tensor,
                       ctx: LayerContext, backend: KernelBackend) -> EagleServingModel:
    """A serving model from a head's state dict (e.g. while training, without files)."""
    with torch.device(embed.device):
        model = EagleServingModel(cfg, embed, ctx, backend)
    model.load_state({k: v for k, v in state.items() if k in _SAVED or k.startswith("layer.")})
    return model.eval()


_SAVED = {"fuse.weight", "in_proj.weight", "norm.weight", "head.weight", "d2t"}
