"""Small frozen configuration objects shared by the services and the CLI, validated once."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from specgrove.runner import KVCacheConfig
from specgrove.tree import parse_branching
from specgrove.types import InvalidRequest, TreeBudget

DTYPES = {
    "float32": torch.float32, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "float64": torch.float64,
}


@dataclass(frozen=True)
class ModelRunConfig:
    """Which checkpoint, in which precision, on which device, with which kernels and KV size."""

    model: str
    dtype: str = "float32"
    device: str = "auto"
    kernel_backend: str = "auto"
    kv: KVCacheConfig = KVCacheConfig()

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InvalidRequest("dtype", f"{self.dtype!r} is not one of {', '.join(DTYPES)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def tree_budget(
    tree: str | None, nodes: int | None, depth: int | None, top_k: int | None
) -> TreeBudget:
    """A static shape (``"4,2,2,1"``) or a dynamic nodes/depth/top-k budget."""
    if tree:
        if nodes is not None or depth is not None:
            raise InvalidRequest("tree", "give either a static shape or nodes/depth, not both")
        return TreeBudget(branching=parse_branching(tree))
    budget = TreeBudget(
        max_nodes=16 if nodes is None else nodes, max_depth=5 if depth is None else depth,
        top_k=4 if top_k is None else top_k,
    )
    if budget.max_nodes < 1 or budget.max_depth < 0 or budget.top_k < 1:
        raise InvalidRequest("tree", "nodes must be >= 1, depth >= 0 and top-k >= 1")
    return budget


def parse_tree_option(text: str) -> TreeBudget:
    """``NODES:DEPTH[:TOP_K]`` (dynamic) or a static shape ``4,2,2,1`` (a lone ``4`` is static)."""
    if ":" not in text:
        return tree_budget(text, None, None, None)
    try:
        parts = [int(x) for x in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3):
        raise InvalidRequest("tree", f"expected NODES:DEPTH[:TOP_K] or a shape like 4,2,2,1; got {text!r}")
    return tree_budget(None, parts[0], parts[1], parts[2] if len(parts) == 3 else None)
