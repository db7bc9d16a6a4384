"""The target as an in-process port: :class:`TargetEngine` behind the service's limits.

What the gRPC servicer serves and what ``specgrove generate``, the tests and the benchmarks
drive directly: the same checks (sequence and tree-size limits, checked before any state
changes), the same errors; engine calls run on the service's engine thread, or in process
on the caller's thread (``CallerThread``). See ``specgrove.ports.TargetPort``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from specgrove.engine_thread import CallerThread, EngineThread
from specgrove.errors import InvalidRequest, ResourceExhausted
from specgrove.types import PrefillRequest, PrefillResult, TargetInfo, VerifyItem, VerifyResult
from target_service.engine import TargetEngine


@dataclass(frozen=True)
class TargetLimits:
    max_num_seqs: int = 256  # sequences held at once; more -> RESOURCE_EXHAUSTED
    max_tree_nodes: int = 64  # nodes per tree per step; more -> INVALID_ARGUMENT


class LocalTarget:
    def __init__(self, engine: TargetEngine, model_name: str, dtype: str,
                 limits: TargetLimits = TargetLimits(), thread: EngineThread | None = None) -> None:
        self.engine = engine
        self.model_name, self.dtype = model_name, dtype
        self.limits = limits
        self.thread = thread or CallerThread()  # the services pass their engine thread
        self.free_blocks: int | None = engine.capacity().free_blocks

    def describe(self) -> TargetInfo:
        eng = self.engine
        cap = eng.capacity()
        tp_size = getattr(eng.runner.executor, "tp_size", 1)
        return TargetInfo(
            self.model_name, eng.vocab_size, cap.max_model_len, cap.block_size, cap.total_blocks,
            cap.free_blocks, tp_size, tuple(eng.runner.config.eos_token_ids),
            self.limits.max_num_seqs, self.limits.max_tree_nodes, self.dtype,
            eng.runner.config.hidden_size,
        )

    async def info(self) -> TargetInfo:
        info = self.describe()
        self.free_blocks = info.free_blocks
        return info

    async def prefill(self, requests: Sequence[PrefillRequest]) -> list[PrefillResult]:
        running = self.engine.num_sequences
        if running + len(requests) > self.limits.max_num_seqs:
            raise ResourceExhausted(
                f"{running} sequences running; {len(requests)} more exceed max_num_seqs "
                f"{self.limits.max_num_seqs}")
        return await self._run(self.engine.prefill, list(requests))

    async def verify(self, items: Sequence[VerifyItem]) -> list[VerifyResult]:
        for i, item in enumerate(items):
            if len(item.tree) > self.limits.max_tree_nodes:
                raise InvalidRequest(f"items[{i}].tree", f"{len(item.tree)} nodes exceed the "
                                     f"limit of {self.limits.max_tree_nodes}")
        return await self._run(self.engine.verify, list(items))

    async def release(self, seq_ids: Sequence[int]) -> int:
        def release_all() -> None:
            for seq_id in seq_ids:
                self.engine.release(seq_id)

        await self._run(release_all)
        return self.free_blocks

    async def serving(self) -> bool:
        return True  # in process: it answers whenever it is called

    async def close(self) -> None:
        self.thread.shutdown()

    async def _run(self, fn, *args):
        try:
            return await self.thread.run(fn, *args)
        finally:
            self.free_blocks = self.engine.capacity().free_blocks
