"""Tensor-parallel building blocks (Megatron-LM, Shoeybi et al. 2019), sized by a TP group.

Column-parallel layers split output features across ranks; row-parallel layers split input
features and all-reduce their partial sums; the vocabulary-parallel embedding and LM head split
the vocabulary. Every parameter carries a ``weight_loader`` that cuts its own shard out of a
full checkpoint tensor, so a rank never holds more than its part. With ``size == 1`` the layers
are plain linear layers and the collectives are no-ops.

Weight layout is a start-up choice (:class:`LayerContext`): ``[out, in]`` as checkpoints store
it, or transposed ``[in, out]``. On CPU the transposed layout makes one-token GEMV about 1.3x
faster (measured: 22 vs 17 GB/s on this project's 2-core machine) and costs ~5% for M >= 4.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TPGroup:
    rank: int = 0
    size: int = 1
    group: Any = None  # torch.distributed process group when size > 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` along the last dimension."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


@dataclass(frozen=True)
class LayerContext:
    """What every layer needs to allocate its parameters."""

    tp: TPGroup = TPGroup()
    dtype: torch.dtype = torch.float32
    transposed: bool = False  # store weights as [in, out]


def _param(ctx: LayerContext, out_features: int, in_features: int) -> nn.Parameter:
    shape = (in_features, out_features) if ctx.transposed else (out_features, in_features)
    return nn.Parameter(torch.zeros(shape, dtype=ctx.dtype), requires_grad=False)


def _matmul(x: torch.Tensor, weight: torch.Tensor, transposed: bool, bias=None, kernel=None) -> torch.Tensor:
    if kernel is not None:  # a CPU kernel over this layer's weight (``cpu_kernels``)
        out = kernel(x)
        return out if bias is None else out + bias
    if not transposed:
        return F.linear(x, weight, bias)
    out = x @ weight
    return out if bias is None else out + bias


def _divide(n: int, k: int, what: str) -> int:
    if n % k:
        raise ValueError(f"{what} ({n}) is not divisible by the tensor-parallel size ({k})")
    return n // k


class ColumnParallelLinear(nn.Module):
    """y = x W^T (+ b) with W's output features made of named shards, each split across ranks.

    ``shard_sizes`` are the full (unsplit) output sizes of the logical sub-matrices stored
    back to back (e.g. q, k, v); each is split evenly across the TP group.
    """

    def __init__(
        self, in_features: int, shard_sizes: Sequence[int], bias: bool, ctx: LayerContext
    ) -> None:
        super().__init__()
        self.tp, self.transposed = ctx.tp, ctx.transposed
        self.local_sizes = [_divide(s, ctx.tp.size, "output features") for s in shard_sizes]
        out = sum(self.local_sizes)
        self.weight = _param(ctx, out, in_features)
        self.weight.weight_loader = self._load  # type: ignore[attr-defined]
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.zeros(out, dtype=ctx.dtype), requires_grad=False)
            self.bias.weight_loader = self._load  # type: ignore[attr-defined]

    def _load(self, param: nn.Parameter, full: torch.Tensor, shard: int = 0) -> None:
        local = self.local_sizes[shard]
        offset = sum(self.local_sizes[:shard])
        piece = full.narrow(0, self.tp.rank * local, local)  # [local, in] or [local]
        if param.dim() == 2 and self.transposed:
            param.data.narrow(1, offset, local).copy_(piece.t())
        else:
            param.data.narrow(0, offset, local).copy_(piece)

    kernel = None  # set by specgrove.modeling.cpu_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _matmul(x, self.weight, self.transposed, self.bias, self.kernel)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local W_local^T): input features split across ranks."""

    def __init__(self, in_features: int, out_features: int, ctx: LayerContext) -> None:
        super().__init__()
        self.tp, self.transposed = ctx.tp, ctx.transposed
        self.local_in = _divide(in_features, ctx.tp.size, "input features")
        self.weight = _param(ctx, out_features, self.local_in)
        self.weight.weight_loader = self._load  # type: ignore[attr-defined]

    def _load(self, param: nn.Parameter, full: torch.Tensor, shard: int = 0) -> None:
        piece = full.narrow(1, self.tp.rank * self.local_in, self.local_in)  # [out, local_in]
        param.data.copy_(piece.t() if self.transposed else piece)

    kernel = None  # set by specgrove.modeling.cpu_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(_matmul(x, self.weight, self.transposed, kernel=self.kernel))


class VocabParallelEmbedding(nn.Module):
    """Embedding whose vocabulary rows are split across ranks (padded to a multiple of size)."""

    def __init__(self, vocab_size: int, dim: int, ctx: LayerContext) -> None:
        super().__init__()
        self.tp, self.transposed = ctx.tp, ctx.transposed
        self.vocab_size = vocab_size
        self.per_rank = -(-vocab_size // ctx.tp.size)
        self.start = ctx.tp.rank * self.per_rank
        # [per_rank, dim], or [dim, per_rank] when transposed (then shared with a tied LM head).
        self.weight = _param(ctx, self.per_rank, dim)
        self.weight.weight_loader = self._load  # type: ignore[attr-defined]

    def _load(self, param: nn.Parameter, full: torch.Tensor, shard: int = 0) -> None:
        rows = full[self.start : self.start + self.per_rank]  # [<= per_rank, dim]
        if self.transposed:
            param.data[:, : rows.shape[0]].copy_(rows.t())
        else:
            param.data[: rows.shape[0]].copy_(rows)

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, dim]
        if self.transposed:  # contiguous: else the whole residual stream stays column-major
            return self.weight[:, ids].t().contiguous()
        return F.embedding(ids, self.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return self._lookup(ids)
        local = ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        out = self._lookup(local.masked_fill(outside, 0))
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return self.tp.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Logits = h E^T over the local vocabulary rows, gathered to the full vocabulary."""

    kernel = None  # set by specgrove.modeling.cpu_kernels

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, V]
        logits = self.tp.all_gather_last(_matmul(hidden, self.weight, self.transposed, kernel=self.kernel))
        return logits[..., : self.vocab_size]
