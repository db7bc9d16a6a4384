"""The trainable EAGLE head, in plain torch (no paged cache): what ``specgrove distill`` trains.

At position t the head reads the feature of the token before (``f_{t-1}``: the target's hidden
states at the feature layers, fused to width d by ``fuse``; or, for tokens the head drafted
itself, its own output ``h_{t-1}``) and the embedding of token ``x_t`` (the target's, frozen),
projects the pair to d (``in_proj``), runs one llama decoder layer, and predicts ``x_{t+1}``
over a truncated draft vocabulary (``head``; ``d2t`` maps draft ids to target ids). EAGLE
(Li et al. 2024) feeds ``(f_t, e_{t+1})`` pairs and one layer; EAGLE-3 fuses low/mid/high
features and trains with *training-time test*: unrolled steps in which the head's own outputs
replace the target features, as they do at inference for every depth after the first. Here
step s of ``forward_train`` feeds each position the step s-1 output of the position before,
and lets it attend to the true (step 0) keys up to ``t - s`` and to the step-j keys on its own
diagonal -- exactly what a depth-s tree node sees at inference.

Parameter names follow the Hugging Face llama layer (``layer.self_attn.q_proj`` ...), so the
serving model (``serving.py``) loads them with the same fused-shard loaders as the target.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from draft_service.drafters.eagle.config import EagleConfig
from specgrove.modeling.layers import apply_rope, rope_inv_freq


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class _Attention(nn.Module):
    def __init__(self, cfg: EagleConfig) -> None:
        super().__init__()
        d, h, hkv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = h, hkv, hd
        self.q_proj = nn.Linear(d, h * hd, bias=False)
        self.k_proj = nn.Linear(d, hkv * hd, bias=False)
        self.v_proj = nn.Linear(d, hkv * hd, bias=False)
        self.o_proj = nn.Linear(h * hd, d, bias=False)

    def forward(self, x, cos, sin, past: list, mask: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """x: [B, T, d]; cos/sin: [T, 1, hd/2]; past: earlier steps' (k, v), each
        [B, Hkv, T, hd]; mask: [T, (len(past) + 1) * T] bool, True = visible."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # rope broadcasts over B
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
        keys = torch.cat([pk for pk, _ in past] + [k], dim=2)
        values = torch.cat([pv for _, pv in past] + [v], dim=2)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                             enable_gqa=self.heads != self.kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), (k, v)


class _MLP(nn.Module):
    def __init__(self, cfg: EagleConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, cfg: EagleConfig) -> None:
        super().__init__()
        self.input_layernorm = _RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = _Attention(cfg)
        self.post_attention_layernorm = _RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = _MLP(cfg)

    def forward(self, x, cos, sin, past, mask):
        attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, past, mask)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv


def step_mask(t: int, step: int, device=None) -> torch.Tensor:  # [T, (step + 1) * T] bool
    """Who unroll step ``step`` sees: the true keys at positions <= t - step, and the step-j
    key at position t - step + j on its own diagonal (j = 1 .. step; j = step is itself)."""
    q = torch.arange(t, device=device)[:, None]
    k = torch.arange(t, device=device)[None, :]
    blocks = [k <= q - step]
    blocks += [k == q - step + j for j in range(1, step + 1)]
    return torch.cat(blocks, dim=1)


class EagleHead(nn.Module):
    def __init__(self, cfg: EagleConfig, embed: torch.Tensor, d2t: torch.Tensor) -> None:
        """``embed``: the target's token embedding [V, d] (frozen, not saved); ``d2t``: [Vd]
        target id of each draft-vocabulary entry."""
        super().__init__()
        d = cfg.hidden_size
        self.cfg = cfg
        self.fuse = nn.Linear(cfg.feature_width, d, bias=False)
        self.in_proj = nn.Linear(2 * d, d, bias=False)
        self.layer = _Layer(cfg)
        self.norm = _RMSNorm(d, cfg.rms_norm_eps)
        self.head = nn.Linear(d, cfg.draft_vocab_size, bias=False)
        self.register_buffer("embed", embed.detach().float(), persistent=False)
        self.register_buffer("d2t", d2t.long())
        self.register_buffer("inv_freq", rope_inv_freq(cfg.rope, cfg.head_dim), persistent=False)

    def _rope(self, t: int, offset: int):
        # In float32 whatever the head's dtype, as the serving model's RoPE tables are.
        positions = torch.arange(offset, offset + t, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(positions, self.inv_freq.float())
        return freqs.cos()[:, None, :], freqs.sin()[:, None, :]  # [T, 1, hd/2]

    def forward_train(self, features: torch.Tensor, tokens: torch.Tensor, steps: int = 1,
                      first_position: int = 1) -> list[torch.Tensor]:
        """Draft hidden states for every unroll step.

        features: [B, T, feature_width] -- row t is the target's feature of the token before
        ``tokens[:, t]`` (f_{t-1}); tokens: [B, T], whose first sits at ``first_position`` (RoPE).
        Returns ``steps`` tensors [B, T, d]: step s row t is the head's output at position t
        when its input feature came from its own step s - 1 output at t - 1 (rows t < s have no
        such chain and are garbage: mask their loss).
        """
        t = tokens.shape[1]
        cos, sin = self._rope(t, first_position)
        emb = F.embedding(tokens, self.embed)
        fed = self.fuse(features)
        outs, past = [], []
        for s in range(steps):
            x = self.in_proj(torch.cat([fed, emb], dim=-1))
            h, kv = self.layer(x, cos, sin, past, step_mask(t, s, tokens.device))
            outs.append(h)
            past.append(kv)
            fed = F.pad(h[:, :-1], (0, 0, 1, 0))  # position t now reads step s's h_{t-1}
        return outs

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [..., d] -> [..., Vd]
        return self.head(self.norm(hidden))


def save_head(head: EagleHead, directory) -> None:
    """Write a head as ``specgrove`` loads it: config.json + model.safetensors (with d2t)."""
    from pathlib import Path

    from safetensors.torch import save_file

    from draft_service.drafters.eagle.config import WEIGHTS_FILE

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    head.cfg.save(directory)
    # bfloat16 on disk (the head serves in the target's precision anyway): half the size.
    state = {k: (v.detach().to(torch.bfloat16) if v.is_floating_point() and v.dtype != torch.float64
                 else v.detach()).contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
