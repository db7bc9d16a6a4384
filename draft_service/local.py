"""The draft service as an in-process port: :class:`DraftEngine` behind the service's checks.

What the gRPC servicer serves and what ``specgrove generate``, the tests and the benchmarks
drive directly. In the service, engine work (prefill, propose, release) runs on the engine
thread and loading a drafter on a separate loader thread, so a model that takes seconds to load
never stalls the running batch; in process both run on the caller's thread. See ``specgrove.ports.DraftPort``.
"""
from __future__ import annotations

from typing import Sequence

from draft_service.engine import DraftEngine
from draft_service.load_policy import LoadPolicy
from specgrove.engine_thread import CallerThread, EngineThread
from specgrove.errors import InvalidRequest
from specgrove.types import DrafterInfo, DraftInfo, DraftPrefill, ProposeRequest, ProposeResult


class LocalDraft:
    def __init__(self, engine: DraftEngine, vocab_size: int, thread: EngineThread | None = None,
                 loader: EngineThread | None = None, policy: LoadPolicy | None = None) -> None:
        self.engine = engine
        self.vocab_size = vocab_size
        # What load_drafter may build (the service's allow-list); None in process, where the
        # caller is the operator.
        self.policy = policy
        self._loading: set[str] = set()  # names being built, so two loads cannot race for one
        # In process, the caller's thread (``CallerThread``); the service passes its threads.
        self.thread = thread or CallerThread()
        self.loader = loader or CallerThread()

    async def info(self) -> DraftInfo:
        return DraftInfo(self.vocab_size, self.engine.registry.default, self.engine.num_sequences)

    async def prefill(self, sequences: Sequence[DraftPrefill]) -> None:
        ids = [s.seq_id for s in sequences]
        if len(set(ids)) != len(ids):
            raise InvalidRequest("sequences.seq_id", "duplicate sequence ids in one prefill")
        for i, seq in enumerate(sequences):
            bad = next((t for t in seq.token_ids if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise InvalidRequest(f"sequences[{i}].token_ids",
                                     f"token {bad} is outside the vocabulary of {self.vocab_size}")

        def prefill_all() -> None:
            for seq in sequences:
                self.engine.prefill(seq.seq_id, seq.token_ids, seq.sampling, seq.features)

        await self.thread.run(prefill_all)

    async def propose(self, requests: Sequence[ProposeRequest]) -> list[ProposeResult]:
        return await self.thread.run(self.engine.propose, list(requests))

    async def release(self, seq_ids: Sequence[int]) -> None:
        def release_all() -> None:
            for seq_id in seq_ids:
                self.engine.release(seq_id)

        await self.thread.run(release_all)

    async def load_drafter(self, name: str, spec: str, make_default: bool = False) -> DrafterInfo:
        registry = self.engine.registry
        if name in {e.name for e in registry.entries()} | self._loading:
            raise InvalidRequest("name", f"a drafter named {name!r} is already loaded")
        if self.policy is not None:
            self.policy.check(spec, len(registry.entries()) + len(self._loading))
        self._loading.add(name)
        try:
            entry = await self.loader.run(registry.build, name, spec)
        finally:
            self._loading.discard(name)
        return registry.add(entry, make_default)

    async def unload_drafter(self, name: str) -> None:
        self.engine.registry.remove(name)

    async def list_drafters(self) -> list[DrafterInfo]:
        return self.engine.registry.list()

    async def clear_drafter(self, name: str) -> DrafterInfo:
        """Forget what drafter ``name`` learned across requests (on the engine thread, between
        steps); sequences in flight keep their own state."""
        registry = self.engine.registry
        entry = next((e for e in registry.entries() if e.name == name), None)
        if entry is None:
            raise InvalidRequest("name", f"no drafter named {name!r} is loaded")
        if not hasattr(entry.drafter, "clear"):
            raise InvalidRequest("name", f"drafter {name!r} ({entry.drafter.kind}) keeps nothing across requests")
        await self.thread.run(entry.drafter.clear)
        return registry.info(name)

    async def serving(self) -> bool:
        return True  # in process: it answers whenever it is called

    async def close(self) -> None:
        self.thread.shutdown()
        self.loader.shutdown()
