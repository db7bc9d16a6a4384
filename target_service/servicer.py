"""gRPC ``TargetService``: protobuf conversion over the in-process port (a TGI-style shard server).

Each batch is validated as a whole before any state changes, so a bad item fails its RPC with
INVALID_ARGUMENT (naming ``items[i]`` and the field) and leaves every sequence as it was.
With tracing on, the server spans of ``Prefill`` and ``Verify`` carry the batch's
``specgrove.*`` attributes (batch size, tree nodes and depth, accepted tokens, KV blocks).
"""
from __future__ import annotations

from specgrove import telemetry
from specgrove.errors import InvalidRequest
from specgrove.pb.v1 import common_pb2, target_pb2, target_pb2_grpc
from specgrove.service import NotReady, rpc
from specgrove.tree import TreeError
from specgrove.types import PrefillRequest, TargetInfo, VerifyItem
from target_service.local import LocalTarget


class TargetServicer(target_pb2_grpc.TargetServiceServicer):
    def __init__(self) -> None:
        self.target: LocalTarget | None = None  # set once the model is loaded
        self.on_fatal = None  # set by the server: called with the error when serving is over
        self.tracer = None  # set by the server when tracing is on (see specgrove.service.rpc)

    def _target(self) -> LocalTarget:
        if self.target is None:
            raise NotReady("the target model is still loading")
        return self.target

    @rpc
    async def Info(self, request, context):
        return (await self._target().info()).to_pb()

    @rpc
    async def Prefill(self, request: target_pb2.PrefillBatch, context):
        target = self._target()
        reqs = [_convert(f"requests[{i}]", PrefillRequest.from_pb, r)
                for i, r in enumerate(request.requests)]
        results = await target.prefill(reqs)
        if (span := telemetry.recording_span()) is not None:
            span.set_attributes({"specgrove.batch_size": len(reqs),
                                 "specgrove.prompt_tokens": sum(len(r.prompt_ids) for r in reqs),
                                 **_kv_attributes(target.describe())})
        return target_pb2.PrefillBatchResult(results=[r.to_pb() for r in results],
                                             free_blocks=target.free_blocks)

    @rpc
    async def Verify(self, request: target_pb2.VerifyBatch, context):
        target = self._target()
        limit = target.limits.max_tree_nodes
        for i, msg in enumerate(request.items):  # sizes first: a huge tree is refused unparsed
            nodes = max(len(msg.tree.token_ids), len(msg.tree.parents))
            if nodes > limit:
                raise InvalidRequest(f"items[{i}].tree", f"{nodes} nodes exceed the limit of {limit}")
        items = [_convert(f"items[{i}]", VerifyItem.from_pb, msg) for i, msg in enumerate(request.items)]
        results = await target.verify(items)
        if (span := telemetry.recording_span()) is not None:
            span.set_attributes({
                "specgrove.batch_size": len(items),
                "specgrove.tree.nodes": sum(len(it.tree) for it in items),
                "specgrove.tree.depth": max((it.tree.depth for it in items), default=0),
                "specgrove.accepted_tokens": sum(len(r.accepted_tokens) for r in results),
                **_kv_attributes(target.describe())})
        return target_pb2.VerifyBatchResult(results=[r.to_pb() for r in results],
                                            free_blocks=target.free_blocks)

    @rpc
    async def Release(self, request: common_pb2.ReleaseRequest, context):
        free = await self._target().release(list(request.seq_ids))
        return common_pb2.ReleaseResponse(free_blocks=free)


def _kv_attributes(info: TargetInfo) -> dict:
    return {"specgrove.kv.blocks_used": info.total_blocks - info.free_blocks,
            "specgrove.kv.blocks_total": info.total_blocks}


def _convert(where: str, from_pb, msg):
    """Convert one message, prefixing any validation error with its place in the batch."""
    try:
        return from_pb(msg)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}.{exc.field}", exc.reason) from exc
    except TreeError as exc:
        raise InvalidRequest(f"{where}.tree", str(exc)) from exc
