"""gRPC ``DraftService``: protobuf conversion over the in-process port.

With tracing on, the ``Propose`` server span carries the batch's ``specgrove.*`` attributes and
the engine adds a ``draft.propose`` span per drafter (a model drafter one ``draft.expand`` per depth).
"""
from __future__ import annotations

from draft_service.local import LocalDraft
from specgrove import telemetry
from specgrove.errors import InvalidRequest
from specgrove.pb.v1 import common_pb2, draft_pb2, draft_pb2_grpc
from specgrove.service import NotReady, rpc
from specgrove.types import DraftPrefill, ProposeRequest


class DraftServicer(draft_pb2_grpc.DraftServiceServicer):
    def __init__(self) -> None:
        self.draft: LocalDraft | None = None  # set once the initial drafters are loaded
        self.tracer = None  # set by the server when tracing is on (see specgrove.service.rpc)

    def _draft(self) -> LocalDraft:
        if self.draft is None:
            raise NotReady("the draft service is still loading its drafters")
        return self.draft

    @rpc
    async def Info(self, request, context):
        return (await self._draft().info()).to_pb()

    @rpc
    async def Prefill(self, request: draft_pb2.DraftPrefillBatch, context):
        await self._draft().prefill([DraftPrefill.from_pb(s) for s in request.sequences])
        return draft_pb2.DraftPrefillResponse()

    @rpc
    async def Propose(self, request: draft_pb2.ProposeBatch, context):
        draft = self._draft()
        reqs = []
        for i, msg in enumerate(request.requests):
            try:
                reqs.append(ProposeRequest.from_pb(msg))
            except InvalidRequest as exc:
                raise InvalidRequest(f"requests[{i}].{exc.field}", exc.reason) from exc
        results = await draft.propose(reqs)
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
        await self._draft().release(list(request.seq_ids))
        return common_pb2.ReleaseResponse()

    @rpc
    async def LoadDrafter(self, request: draft_pb2.LoadDrafterRequest, context):
        info = await self._draft().load_drafter(request.name, request.spec, request.make_default)
        return info.to_pb()

    @rpc
    async def UnloadDrafter(self, request: draft_pb2.UnloadDrafterRequest, context):
        await self._draft().unload_drafter(request.name)
        return draft_pb2.UnloadDrafterResponse()

    @rpc
    async def ListDrafters(self, request, context):
        infos = await self._draft().list_drafters()
        return draft_pb2.ListDraftersResponse(drafters=[i.to_pb() for i in infos])

    @rpc
    async def ClearDrafter(self, request: draft_pb2.ClearDrafterRequest, context):
        return (await self._draft().clear_drafter(request.name)).to_pb()
