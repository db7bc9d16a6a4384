"""Training an EAGLE head on distillation data: soft cross-entropy against the target's top-k.

Each example is a window of one sample: position t reads the target's feature of token t - 1
and token t, and learns the target's distribution of token t + 1 (its top-k, renormalised over
the draft vocabulary). With ``ttt_steps > 1`` the head is also trained on its own outputs
(EAGLE-3's training-time test, ``EagleHead.forward_train``), step s weighted ``decay ** s``.
Only response tokens count in the loss; prompt tokens are context. AdamW with warm-up and
cosine decay over the steps the time budget allows (measured after the first steps); a
checkpoint (head, optimiser, step, data order) every ``checkpoint_every`` steps makes an
interrupted run resume where it stopped. Mixed precision: the weights, gradients and optimiser
state stay float32; the forward and backward matmuls run in bfloat16 under autocast where the
hardware has it (AVX512_BF16 / AMX CPUs, CUDA) -- 1.9x per step on this project's 2-core CPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from draft_service.drafters.eagle.head import EagleHead
from draft_service.training.data import Dataset


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000  # optimiser steps at most (the deadline may stop it sooner)
    batch: int = 8  # windows per step
    window: int = 256  # tokens per window
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    ttt_steps: int = 2  # unrolled steps on the head's own outputs (1 = plain EAGLE training)
    ttt_decay: float = 0.7
    checkpoint_every: int = 200
    seed: int = 0
    bf16_autocast: bool | None = None  # None: where the hardware computes bfloat16 natively


@dataclass
class Batch:
    features: torch.Tensor  # [B, T, W] float32: row t is the feature of the token before token t
    tokens: torch.Tensor  # [B, T] int64
    label_ids: torch.Tensor  # [B, T, K] draft-vocabulary ids of the target's top-k (-1 = outside)
    label_probs: torch.Tensor  # [B, T, K] float32, renormalised over the ids inside
    mask: torch.Tensor  # [B, T] float32: 1 where the loss counts


class Windows:
    """Random training windows over a dataset (response region, with the prompt as context)."""

    def __init__(self, data: Dataset, t2d: torch.Tensor, window: int, rng: np.random.Generator) -> None:
        self.data, self.t2d, self.window, self.rng = data, t2d, window, rng
        lengths = np.diff(data.starts)
        # A sample is usable if it has a response token to predict after position 1.
        self.usable = np.flatnonzero(lengths - data.prompt_lens >= 2)
        self.weights = (lengths[self.usable] - data.prompt_lens[self.usable]).astype(np.float64)
        self.weights /= self.weights.sum()

    def batch(self, size: int) -> Batch:
        picks = self.rng.choice(self.usable, size=size, p=self.weights)
        rows = [self._window(int(i)) for i in picks]
        t = max(len(r[1]) for r in rows)
        pad = lambda a, value=0: np.pad(a, [(0, t - len(a))] + [(0, 0)] * (a.ndim - 1), constant_values=value)
        feats = torch.from_numpy(np.stack([pad(r[0]) for r in rows])).view(torch.bfloat16).float()
        tokens = torch.from_numpy(np.stack([pad(r[1]) for r in rows])).long()
        ids = torch.from_numpy(np.stack([pad(r[2]) for r in rows])).long()
        probs = torch.from_numpy(np.stack([pad(r[3]) for r in rows]).astype(np.float32))
        mask = torch.from_numpy(np.stack([pad(r[4]) for r in rows]).astype(np.float32))
        draft_ids = self.t2d[ids]  # [B, T, K], -1 outside the draft vocabulary
        probs = probs * (draft_ids >= 0)
        total = probs.sum(-1, keepdim=True)
        mask = mask * (total[..., 0] > 0)
        probs = probs / total.clamp_min(1e-8)
        return Batch(feats, tokens, draft_ids, probs, mask)

    def _window(self, i: int):
        """Rows ``lo .. hi - 1`` of sample i: position t has a feature before it (t >= 1) and
        a next token after it (t <= n - 2). RoPE is relative, so windows need not start at 0."""
        d = self.data
        a, b, plen = int(d.starts[i]), int(d.starts[i + 1]), int(d.prompt_lens[i])
        n = b - a
        lo, hi = 1, n - 1
        if hi - lo > self.window:  # a random window that overlaps the response
            first = min(max(1, plen - 1 - self.window // 4), n - 1 - self.window)
            lo = int(self.rng.integers(first, n - 1 - self.window + 1))
            hi = lo + self.window
        positions = np.arange(lo, hi)
        feats = np.asarray(d.features[a + lo - 1:a + hi - 1])
        tokens = d.tokens[a + lo:a + hi]
        ids = np.asarray(d.topk_ids[a + lo:a + hi])
        probs = np.asarray(d.topk_probs[a + lo:a + hi])
        mask = (positions >= plen - 1).astype(np.float32)  # predicts a response token
        return feats, tokens, ids, probs, mask


def soft_cross_entropy(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over counted positions of -sum_k p_k log q(id_k); and the top-1 agreement rate."""
    logq = logits.float().log_softmax(-1)  # [B, T, Vd]
    picked = logq.gather(-1, batch.label_ids.clamp_min(0))  # [B, T, K]
    per_token = -(batch.label_probs * picked).sum(-1)  # [B, T]
    count = batch.mask.sum().clamp_min(1.0)
    loss = (per_token * batch.mask).sum() / count
    hit = (logits.argmax(-1) == batch.label_ids[..., 0]).float()
    return loss, (hit * batch.mask).sum() / count


def train(head: EagleHead, data: Dataset, cfg: TrainConfig, checkpoint: Path, deadline: float,
          progress: Callable[[int, dict], None] = lambda step, stats: None) -> dict:
    """Train until ``cfg.steps`` or ``deadline``; resume from ``checkpoint`` if it exists."""
    torch.manual_seed(cfg.seed)
    t2d = torch.full((head.cfg.target_vocab_size,), -1, dtype=torch.long)
    t2d[head.d2t] = torch.arange(len(head.d2t))
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    step, rng_state = 0, None
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        head.load_state_dict(saved["head"])
        opt.load_state_dict(saved["optimizer"])
        step, rng_state = saved["step"], saved["rng"]
    rng = np.random.default_rng(cfg.seed)
    if rng_state is not None:
        rng.bit_generator.state = rng_state
    windows = Windows(data, t2d, cfg.window, rng)
    device = next(head.parameters()).device
    autocast = _native_bf16(device) if cfg.bf16_autocast is None else cfg.bf16_autocast
    stats = {"loss": float("nan"), "top1": float("nan")}
    first_loss = None
    head.train()
    horizon, timed_from = cfg.steps, None  # the cosine schedule's length: what the time allows
    while step < horizon and time.monotonic() < deadline:
        if timed_from is None and step >= 5:
            timed_from = (step, time.monotonic())
        elif timed_from is not None and step == timed_from[0] + 20:
            per_step = (time.monotonic() - timed_from[1]) / 20
            horizon = min(cfg.steps, step + int((deadline - time.monotonic()) / per_step))
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / horizon)))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = windows.batch(cfg.batch)
        losses, hits = [], []
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            outs = head.forward_train(batch.features, batch.tokens, cfg.ttt_steps)
            for s, hidden in enumerate(outs):
                valid = batch.mask.clone()
                valid[:, :s] = 0  # no chain of s own outputs before these rows
                loss, hit = soft_cross_entropy(head.logits(hidden), _masked(batch, valid))
                losses.append(cfg.ttt_decay ** s * loss)
                hits.append(hit.item())
        total = sum(losses) / sum(cfg.ttt_decay ** s for s in range(len(outs)))
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        first_loss = total.item() if first_loss is None else first_loss
        stats = {"loss": total.item(), "first_loss": first_loss, "top1": hits[0], "top1_ttt": hits[-1],
                 "lr": lr}
        progress(step, stats)
        if step % cfg.checkpoint_every == 0:
            _save(checkpoint, head, opt, step, rng)
    _save(checkpoint, head, opt, step, rng)
    head.eval()
    return {"steps": step, **stats}


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from specgrove.kernels.cpu_build import has_native_bf16

    return has_native_bf16()


def _masked(batch: Batch, mask: torch.Tensor) -> Batch:
    return Batch(batch.features, batch.tokens, batch.label_ids, batch.label_probs, mask)


def _save(path: Path, head: EagleHead, opt, step: int, rng: np.random.Generator) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"head": head.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "rng": rng.bit_generator.state}, tmp)
    tmp.replace(path)
