"""Shared test helpers: engines over tiny checkpoints, and generation through the real step loop.

``generate`` runs the gateway's orchestrator over the in-process ports, the same loop that
serves REST and gRPC users; tests never drive the engines with a loop of their own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from draft_service.drafters.model import ModelDrafter
from draft_service.drafters.ngram import NgramDrafter
from draft_service.engine import DraftEngine
from draft_service.local import LocalDraft
from gateway.job import JobSpec
from gateway.offline import OFFLINE, Completion
from gateway.offline import generate as run_orchestrator
from gateway.orchestrator import SchedulerConfig
from specgrove.config import ModelRunConfig
from specgrove.kv import KVCacheConfig
from specgrove.runner import ModelRunner, load_runner
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget
from target_service.engine import TargetEngine
from target_service.local import LocalTarget, TargetLimits

CPU = torch.device("cpu")


def runner(path: Path, dtype=torch.float64, block_size=4, num_blocks=512, shuffle_seed=None,
           transposed=None, backend="torch") -> ModelRunner:
    run = ModelRunConfig(str(path), str(dtype).removeprefix("torch."), "cpu", backend,
                         KVCacheConfig(block_size, num_blocks, shuffle_seed), transposed)
    return load_runner(run)


def target_engine(path: Path, **kw) -> TargetEngine:
    return TargetEngine(runner(path, **kw))


def draft_engine(draft_path: Path | None = None, **kw) -> DraftEngine:
    drafters = {"ngram": NgramDrafter()}
    if draft_path is not None:
        drafters["model"] = ModelDrafter(runner(draft_path, **kw))
    return DraftEngine.of(drafters, "ngram")


def request(prompt: Sequence[int], max_tokens: int, sampling: SamplingParams = SamplingParams(),
            budget: TreeBudget = TreeBudget.off(), drafter: str = "", **kw) -> JobSpec:
    """A token-level request that ignores end-of-sequence tokens (tests compare fixed lengths)."""
    return JobSpec(tuple(prompt), max_tokens, sampling, drafter=drafter, budget=budget,
                   ignore_eos=kw.pop("ignore_eos", True), **kw)


def generate(target: TargetEngine, drafts: DraftEngine, specs: Sequence[JobSpec],
             cfg: SchedulerConfig = OFFLINE, codec=None) -> list[Completion]:
    """Run ``specs`` through the orchestrator over in-process ports of these engines. A request
    that fails raises: comparing failed outputs with each other would pass for a broken engine."""
    limits = TargetLimits(max_num_seqs=1 << 20, max_tree_nodes=256)
    local_target = LocalTarget(target, "test-model", "float64", limits)
    local_draft = LocalDraft(drafts, target.vocab_size)
    try:
        outs = run_orchestrator(local_target, local_draft, specs, codec, cfg)
        failed = [o.error for o in outs if o.error is not None]
        if failed:
            raise AssertionError(f"{len(failed)} of {len(outs)} requests failed, e.g. {failed[0]}")
        return outs
    finally:
        local_target.thread.shutdown()
        local_draft.thread.shutdown()
        local_draft.loader.shutdown()
