"""Shared test helpers: build engines over tiny checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch

from draft_service.drafters.model import ModelDrafter
from draft_service.drafters.ngram import NgramDrafter
from draft_service.engine import DraftEngine
from kernels.backend import select_backend
from specgrove.modeling.loader import build_model
from specgrove.runner import KVCacheConfig, ModelRunner
from target_service.engine import TargetEngine

CPU = torch.device("cpu")


def runner(path: Path, dtype=torch.float64, block_size=4, num_blocks=512, shuffle_seed=None,
           transposed=None, backend="torch") -> ModelRunner:
    model = build_model(path, dtype, CPU, select_backend(backend, CPU), transposed=transposed)
    return ModelRunner(model, KVCacheConfig(block_size, num_blocks, shuffle_seed), CPU)


def target_engine(path: Path, **kw) -> TargetEngine:
    return TargetEngine(runner(path, **kw))


def draft_engine(draft_path: Path | None = None, **kw) -> DraftEngine:
    drafters = {"ngram": NgramDrafter()}
    if draft_path is not None:
        drafters["model"] = ModelDrafter(runner(draft_path, **kw))
    return DraftEngine.of(drafters, "ngram")

