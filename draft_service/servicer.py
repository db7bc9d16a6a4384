"""gRPC ``DraftService`` over the draft engine and its drafter registry.

Engine work (prefill, propose, release) runs on the engine thread; loading a drafter runs on a
separate loader thread, so a model that takes seconds to load never stalls the running batch.
With tracing on, the ``Propose`` server span carries the batch's ``specgrove.*`` attributes and
the engine adds a ``draft.propose`` span per drafter (a model drafter one ``draft.expand`` per depth).
"""
from __future__ import annotations

from draft_service.engine import DraftEngine
from specgrove import telemetry
from specgrove.pb.v1 import common_pb2, draft_pb2, draft_pb2_grpc
from specgrove.service import EngineThread, NotReady, rpc
from specgrove.types import InvalidRequest, ProposeRequest


class DraftServicer(draft_pb2_grpc.DraftServiceServicer):
    def __init__(self, vocab_size: int) -> None:
        self.engine: DraftEngine | None = None  # set once the initial drafters are loaded
        self.vocab_size = vocab_size
        self.thread = EngineThread("draft-engine")
        self.loader = EngineThread("draft-loader")
        self.tracer = None  # set by the server when tracing is on (see specgrove.service.rpc)

    def _engine(self) -> DraftEngine:
        if self.engine is None:
            raise NotReady("the draft service is still loading its drafters")
        return self.engine

    @rpc
    async def Info(self, request, context):
        eng = self._engine()
        return draft_pb2.DraftInfo(vocab_size=self.vocab_size, default_drafter=eng.registry.default,
                                   num_sequences=eng.num_sequences)

    @rpc
    async def Prefill(self, request: draft_pb2.DraftPrefillBatch, context):
        eng = self._engine()
        seqs = [(s.seq_id, tuple(s.token_ids)) for s in request.sequences]
        ids = [s for s, _ in seqs]
        if len(set(ids)) != len(ids):
            raise InvalidRequest("sequences.seq_id", "duplicate sequence ids in one prefill")
        for i, (_, tokens) in enumerate(seqs):
            bad = next((t for t in tokens if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise InvalidRequest(f"sequences[{i}].token_ids",
                                     f"token {bad} is outside the vocabulary of {self.vocab_size}")

        def prefill_all() -> None:
            for seq_id, tokens in seqs:
                eng.prefill(seq_id, tokens)

        await self.thread.run(prefill_all)
        return draft_pb2.DraftPrefillResponse()

    @rpc
    async def Propose(self, request: draft_pb2.ProposeBatch, context):
        eng = self._engine()
        reqs = []
        for i, msg in enumerate(request.requests):
            try:
                reqs.append(ProposeRequest.from_pb(msg))
            except InvalidRequest as exc:
                raise InvalidRequest(f"requests[{i}].{exc.field}", str(exc).split(": ", 1)[-1])
        results = await self.thread.run(eng.propose, reqs)
        if (span := telemetry.recording_span()) is not None:
            span.set_attributes({
                "specgrove.batch_size": len(reqs),
                "specgrove.drafter": ",".join(sorted({r.drafter for r in results})),
                "specgrove.tree.nodes": sum(len(r.tree) for r in results),
                "specgrove.tree.depth": max((r.tree.depth for r in results), default=0),
                "specgrove.draft_tokens": sum(len(r.tree) - 1 for r in results)})
        return draft_pb2.ProposeBatchResult(results=[r.to_pb() for r in results])

    @rpc
    async def Release(self, request: common_pb2.ReleaseRequest, context):
        eng = self._engine()

        def release_all() -> None:
            for seq_id in request.seq_ids:
                eng.release(seq_id)

        await self.thread.run(release_all)
        return common_pb2.ReleaseResponse()

    @rpc
    async def LoadDrafter(self, request: draft_pb2.LoadDrafterRequest, context):
        registry = self._engine().registry
        if request.name in {e.name for e in registry.entries()}:
            raise InvalidRequest("name", f"a drafter named {request.name!r} is already loaded")
        entry = await self.loader.run(registry.build, request.name, request.spec)
        return registry.add(entry, request.make_default).to_pb()

    @rpc
    async def UnloadDrafter(self, request: draft_pb2.UnloadDrafterRequest, context):
        self._engine().registry.remove(request.name)
        return draft_pb2.UnloadDrafterResponse()

    @rpc
    async def ListDrafters(self, request, context):
        infos = self._engine().registry.list()
        return draft_pb2.ListDraftersResponse(drafters=[i.to_pb() for i in infos])

    def shutdown(self) -> None:
        self.thread.shutdown()
        self.loader.shutdown()
