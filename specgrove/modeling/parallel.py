"""Tensor-parallel building blocks (Megatron-LM, Shoeybi et al. 2019), sized by a TP group.

Column-parallel layers split output features across ranks; row-parallel layers split input
features and all-reduce their partial sums; the vocabulary-parallel embedding and LM head split
the vocabulary. Every parameter carries a ``weight_loader`` that cuts its own shard out of a
full checkpoint tensor, so a rank never holds more than its part. With ``size == 1`` the layers
are plain linear layers and the collectives are no-ops.
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
        self, in_features: int, shard_sizes: Sequence[int], bias: bool, tp: TPGroup, dtype
    ) -> None:
        super().__init__()
        self.tp = tp
        self.local_sizes = [_divide(s, tp.size, "output features") for s in shard_sizes]
        out = sum(self.local_sizes)
        self.weight = nn.Parameter(torch.empty(out, in_features, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self._load  # type: ignore[attr-defined]
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(out, dtype=dtype), requires_grad=False)
            self.bias.weight_loader = self._load  # type: ignore[attr-defined]

    def _load(self, param: nn.Parameter, full: torch.Tensor, shard: int = 0) -> None:
        local = self.local_sizes[shard]
        offset = sum(self.local_sizes[:shard])
        piece = full.narrow(0, self.tp.rank * local, local)
        param.data.narrow(0, offset, local).copy_(piece)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local W_local^T): input features split across ranks."""

    def __init__(self, in_features: int, out_features: int, tp: TPGroup, dtype) -> None:
        super().__init__()
        self.tp = tp
        self.local_in = _divide(in_features, tp.size, "input features")
        self.weight = nn.Parameter(
            torch.empty(out_features, self.local_in, dtype=dtype), requires_grad=False
        )
        self.weight.weight_loader = self._load  # type: ignore[attr-defined]

    def _load(self, param: nn.Parameter, full: torch.Tensor, shard: int = 0) -> None:
        param.data.copy_(full.narrow(1, self.tp.rank * self.local_in, self.local_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(F.linear(x, self.weight))


class VocabParallelEmbedding(nn.Module):
    """Embedding whose vocabulary rows are split across ranks (padded to a multiple of size)."""

    def __init__(self, vocab_size: int, dim: int, tp: TPGroup, dtype) -> None:
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.per_rank = -(-vocab_size // tp.size)
        self.start = tp.rank * self.per_rank
        self.weight = nn.Parameter(torch.zeros(self.per_rank, dim, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self._load  # type: ignore[attr-defined]

    def _load(self, param: nn.Parameter, full: torch.Tensor, shard: int = 0) -> None:
        rows = full[self.start : self.start + self.per_rank]
        param.data[: rows.shape[0]].copy_(rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return self.tp.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Logits = h E^T over the local vocabulary rows, gathered to the full vocabulary."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, V]
        logits = self.tp.all_gather_last(F.linear(hidden, self.weight))
        return logits[..., : self.vocab_size]
